"""Evaluation metrics against hand-computed values, the subject bootstrap, figures and tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from earlyad import CLASSES
from earlyad.deidentify import exclusion_counts, find_identifiers, scrub
from earlyad.evaluate.compare import comparison_table, format_interval, leaked_share
from earlyad.evaluate.metrics import (
    BootstrapConfig,
    bootstrap_by_subject,
    bootstrap_indices,
    class_rates,
    confusion_matrix,
    metric_names,
    point_metrics,
    rank_auc,
    read_predictions,
    subject_groups,
)
from earlyad.evaluate.stage import RunOutputs, SummaryOutputs, evaluate_run, summarise_evaluation
from earlyad.evaluate.summary import grid_with_test, training_cost
from earlyad.tables import read_tsv, write_tsv
from earlyad.train import metrics as train_metrics

# A hand-computed 3-class case (rows: CN, CN, MCI, MCI, AD, AD).
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # CN  -> CN
        [0.4, 0.5, 0.1],  # CN  -> MCI
        [0.3, 0.6, 0.1],  # MCI -> MCI
        [0.5, 0.3, 0.2],  # MCI -> CN
        [0.1, 0.2, 0.7],  # AD  -> AD
        [0.2, 0.5, 0.3],  # AD  -> MCI
    ]
)
# Confusion (rows true): CN [1 1 0], MCI [1 1 0], AD [0 1 1].
HAND = {
    "accuracy": 3 / 6,
    "balanced_accuracy": 0.5,  # recall 1/2 for each class
    # CN: positives 0.7, 0.4 vs negatives 0.3 0.5 0.1 0.2 -> 4 + 3 of 8 pairs
    "auc_CN": 7 / 8,
    # MCI: positives 0.6, 0.3 vs 0.2 0.5 0.2 0.5 -> 4 + 2 of 8
    "auc_MCI": 6 / 8,
    # AD: positives 0.7, 0.3 vs 0.1 0.1 0.1 0.2 -> 8 of 8
    "auc_AD": 1.0,
    "macro_auc": (7 / 8 + 6 / 8 + 1) / 3,
    "auc_CN_vs_MCI_AD": 7 / 8,
    # 6 positive and 12 negative (scan, class) pairs; negatives 0.1 x4, 0.2 x4, 0.3, 0.5 x3:
    # 0.7 x2 and 0.6 beat all 12, 0.4 beats 9, 0.3 x2 beat 8 and tie 1 -> (36 + 9 + 17) / 72
    "micro_auc": 62 / 72,
    "precision_CN": 1 / 2,
    "precision_MCI": 1 / 3,
    "precision_AD": 1.0,
    "recall_CN": 0.5,
    "recall_MCI": 0.5,
    "recall_AD": 0.5,
    "sensitivity_AD": 0.5,
    "f1_CN": 2 / 4,
    "f1_MCI": 2 / 5,
    "f1_AD": 2 / 3,
    "specificity_CN": 3 / 4,
    "specificity_MCI": 2 / 4,
    "specificity_AD": 1.0,
}


def predictions_frame(y: np.ndarray, probs: np.ndarray, subjects: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "participant_id": subjects,
            "session_id": [f"ses-M{i:03d}" for i in range(len(y))],
            "true_label": y.astype(int),
            "predicted_label": probs.argmax(axis=1).astype(int),
        }
    )
    for k, c in enumerate(CLASSES):
        df[f"prob_{c}"] = probs[:, k]
    return df


def synthetic_predictions(
    n_subjects: int, seed: int, skill: float = 1.5, visits: int = 2
) -> pd.DataFrame:
    """Subjects with ``visits`` scans each, all with the subject's class; probabilities from a
    softmax of noisy logits with ``skill`` added to the true class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 3, n_subjects), visits)
    logits = rng.normal(size=(labels.size, 3))
    logits[np.arange(labels.size), labels] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    subjects = [f"sub-S{i:04d}" for i in range(n_subjects) for _ in range(visits)]
    return predictions_frame(labels, probs, subjects)


# ------------------------------------------------------------------------- point metrics


def test_hand_computed_three_class_case():
    out = point_metrics(Y, P)
    for name, value in HAND.items():
        assert out[name] == pytest.approx(value), name
    assert confusion_matrix(Y, P.argmax(axis=1)).tolist() == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert set(out) == set(metric_names())


def test_perfect_classifier():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    out = point_metrics(y, probs)
    for name in ("accuracy", "balanced_accuracy", "macro_auc", "micro_auc", "auc_CN_vs_MCI_AD"):
        assert out[name] == 1.0, name
    for c in CLASSES:
        for m in ("auc", "precision", "recall", "f1", "specificity"):
            assert out[f"{m}_{c}"] == 1.0


def test_chance_classifier_has_auc_one_half():
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    out = point_metrics(y, np.full((7, 3), 1 / 3))
    for name in ("macro_auc", "micro_auc", "auc_CN_vs_MCI_AD", "auc_CN", "auc_MCI", "auc_AD"):
        assert out[name] == 0.5, name
    # every scan predicted CN (argmax of a tie is the first class)
    assert out["accuracy"] == pytest.approx(2 / 7)
    assert out["balanced_accuracy"] == pytest.approx(1 / 3)
    assert math.isnan(out["precision_MCI"]) and out["recall_MCI"] == 0.0 and out["f1_MCI"] == 0.0


def test_agrees_with_training_metrics_and_scikit_learn():
    df = synthetic_predictions(40, seed=3, skill=0.8)
    y = df["true_label"].to_numpy()
    probs = df[["prob_CN", "prob_MCI", "prob_AD"]].to_numpy()
    probs = np.round(probs, 1)  # ties
    probs /= probs.sum(axis=1, keepdims=True)
    out = point_metrics(y, probs)
    ref = train_metrics.classification_metrics(y, probs)
    for name in ("accuracy", "balanced_accuracy", "macro_auc"):
        assert out[name] == pytest.approx(ref[name]), name
    aucs = train_metrics.per_class_auc(y, probs)
    for k, c in enumerate(CLASSES):
        assert out[f"auc_{c}"] == pytest.approx(aucs[k])
    positive = y == 1
    assert rank_auc(positive, probs[:, 1]) == pytest.approx(roc_auc_score(positive, probs[:, 1]))


def test_undefined_metrics_are_nan_not_zero():
    assert math.isnan(rank_auc(np.array([True, True]), np.array([0.1, 0.2])))
    rates = class_rates(np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]]))
    assert math.isnan(rates["precision"][1]) and math.isnan(rates["recall"][2])
    assert math.isnan(rates["f1"][2]) and rates["f1"][1] == 0.0


def test_logits_are_refused():
    with pytest.raises(ValueError, match="not logits"):
        point_metrics(Y, P * 5 - 2)


# ------------------------------------------------------------------------- bootstrap


def test_resampling_takes_a_subjects_scans_together():
    subjects = ["sub-A", "sub-B", "sub-A", "sub-C", "sub-B", "sub-A"]
    groups = subject_groups(subjects)
    assert [g.tolist() for g in groups] == [[0, 2, 5], [1, 4], [3]]
    for idx in bootstrap_indices(groups, BootstrapConfig(resamples=200, seed=1)):
        counts = np.bincount(idx, minlength=6)
        assert counts[0] == counts[2] == counts[5] and counts[1] == counts[4]
        assert sum(1 for g in groups for _ in range(counts[g[0]])) == 3  # 3 subjects drawn


def test_interval_contains_the_estimate_and_narrows_with_more_subjects():
    config = BootstrapConfig(resamples=300, seed=0)
    small = bootstrap_by_subject(synthetic_predictions(15, seed=1), config).set_index("metric")
    large = bootstrap_by_subject(synthetic_predictions(240, seed=1), config).set_index("metric")
    for table in (small, large):
        for name in ("accuracy", "balanced_accuracy", "macro_auc", "auc_CN"):
            assert table.loc[name, "lower"] <= table.loc[name, "estimate"], name
            assert table.loc[name, "estimate"] <= table.loc[name, "upper"], name
    width = (large["upper"] - large["lower"]) / (small["upper"] - small["lower"])
    assert width["accuracy"] < 0.5 and width["macro_auc"] < 0.5
    assert (large["resamples"] <= 300).all()


def test_bootstrap_is_seeded():
    df = synthetic_predictions(20, seed=2)
    a = bootstrap_by_subject(df, BootstrapConfig(resamples=100, seed=5))
    b = bootstrap_by_subject(df, BootstrapConfig(resamples=100, seed=5))
    c = bootstrap_by_subject(df, BootstrapConfig(resamples=100, seed=6))
    pd.testing.assert_frame_equal(a, b)
    assert not a[["lower", "upper"]].equals(c[["lower", "upper"]])


def test_interval_coverage_is_near_nominal():
    """Datasets drawn from one classifier: the 90% interval of the accuracy holds the accuracy of
    the population (estimated on a large draw) in about 90% of them."""
    truth = point_metrics(*_arrays(synthetic_predictions(20000, seed=99, visits=1)))["accuracy"]
    config = BootstrapConfig(resamples=100, seed=0, ci=0.9)
    hits = []
    for seed in range(40):
        table = bootstrap_by_subject(synthetic_predictions(60, seed=seed, visits=1), config)
        row = table.set_index("metric").loc["accuracy"]
        hits.append(row["lower"] <= truth <= row["upper"])
    assert 0.75 <= np.mean(hits) <= 1.0


def _arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return df["true_label"].to_numpy(), df[["prob_CN", "prob_MCI", "prob_AD"]].to_numpy()


def test_subject_clustering_widens_the_interval():
    """Ten identical visits per subject carry the information of one: resampling scans would
    give a far narrower (wrong) interval than resampling subjects."""
    config = BootstrapConfig(resamples=300, seed=0)
    once = synthetic_predictions(30, seed=4, visits=1)
    tenfold = pd.concat([once.assign(session_id=f"ses-V{v}") for v in range(10)])
    by_subject = bootstrap_by_subject(tenfold, config).set_index("metric").loc["accuracy"]
    by_scan = bootstrap_by_subject(
        tenfold.assign(participant_id=[f"sub-X{i}" for i in range(len(tenfold))]), config
    ).set_index("metric")
    assert by_subject["upper"] - by_subject["lower"] > 2 * (
        by_scan.loc["accuracy", "upper"] - by_scan.loc["accuracy", "lower"]
    )


def test_bootstrap_config_is_checked():
    with pytest.raises(ValueError, match="evaluation.bootstrap"):
        BootstrapConfig(resamples=0)
    with pytest.raises(ValueError, match="evaluation.ci"):
        BootstrapConfig(ci=1.5)


# ------------------------------------------------------------------------- files and figures


def test_read_predictions_names_the_file_and_problem(tmp_path):
    df = predictions_frame(Y, P, [f"sub-S{i}" for i in range(6)])
    bad = tmp_path / "bad.tsv"
    write_tsv(df.drop(columns="prob_AD"), bad)
    with pytest.raises(ValueError, match=r"bad.tsv: missing column\(s\) \['prob_AD'\]"):
        read_predictions(bad)
    write_tsv(df.assign(predicted_label=2), bad)
    with pytest.raises(ValueError, match="bad.tsv: line 2 has a predicted_label"):
        read_predictions(bad)


def run_fixture(tmp_path, runs=("a", "b")):
    """Two runs' predictions, a grid summary selecting ``b`` and training logs."""
    paths = {}
    for i, run in enumerate(runs):
        d = tmp_path / "training" / run
        d.mkdir(parents=True)
        for split, seed in (("val", 10 + i), ("test", 20 + i)):
            write_tsv(synthetic_predictions(12, seed=seed), d / f"predictions_{split}.tsv")
        log = pd.DataFrame({"epoch": [1, 2], "seconds": [3.0, 5.0], "samples_per_second": [2, 4]})
        write_tsv(log, d / "log.tsv")
        paths[run] = d
    grid = pd.DataFrame(
        {
            "run": list(runs),
            "selected_epoch": [1, 2],
            "val_macro_auc": [0.7, 0.8],
            "selected": [False, True],
        }
    )
    write_tsv(grid, tmp_path / "grid.tsv")
    return paths


def test_evaluate_run_writes_metrics_and_figures(tmp_path):
    d = run_fixture(tmp_path)["a"]
    names = ("m.json", "m.tsv", "cm.png", "r.png", "roc.png")
    out = RunOutputs(*(tmp_path / "ev" / n for n in names))
    doc = evaluate_run(
        "a",
        {"val": d / "predictions_val.tsv", "test": d / "predictions_test.tsv"},
        out,
        BootstrapConfig(resamples=50),
    )
    assert json.loads(out.metrics_json.read_text()) == doc
    assert doc["bootstrap"] == {
        "unit": "subject",
        "resamples": 50,
        "seed": 0,
        "ci": 0.95,
        "interval": "percentile",
    }
    assert doc["splits"]["test"]["scans"] == 24 and doc["splits"]["test"]["subjects"] == 12
    table = read_tsv(out.metrics_tsv)
    assert len(table) == 2 * len(metric_names()) and set(table["split"]) == {"val", "test"}
    for png in (out.confusion, out.radar, out.roc):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_summary_shows_test_metrics_of_the_chosen_run_only(tmp_path):
    paths = run_fixture(tmp_path)
    jsons = {}
    for run, d in paths.items():
        names = ("m.json", "m.tsv", "cm.png", "r.png", "roc.png")
        out = RunOutputs(*(tmp_path / "ev" / run / n for n in names))
        evaluate_run(run, {"test": d / "predictions_test.tsv"}, out, BootstrapConfig(30))
        jsons[run] = out.metrics_json
    train = tmp_path / "train.tsv"
    test_b = read_tsv(paths["b"] / "predictions_test.tsv")
    # one test subject (2 of 24 scans) also in training
    write_tsv(pd.DataFrame({"participant_id": ["sub-Z", test_b["participant_id"][0]]}), train)
    out = SummaryOutputs(*(tmp_path / "sum" / n for n in ("g.tsv", "c.tsv", "c.png", "t.tsv")))
    chosen = summarise_evaluation(
        tmp_path / "grid.tsv",
        jsons,
        {r: d / "log.tsv" for r, d in paths.items()},
        {r: d / "predictions_test.tsv" for r, d in paths.items()},
        train,
        out,
    )
    assert chosen == "b"
    grid = read_tsv(out.grid).set_index("run")
    doc_b = json.loads(jsons["b"].read_text())["splits"]["test"]["metrics"]
    assert grid.loc["b", "test_macro_auc"] == pytest.approx(doc_b["macro_auc"]["estimate"])
    assert grid.loc["b", "test_macro_auc_lower"] == pytest.approx(doc_b["macro_auc"]["lower"])
    assert pd.isna(grid.loc["a", "test_macro_auc"]) and pd.isna(grid.loc["a", "test_scans"])
    comparison = read_tsv(out.comparison).set_index("metric")
    assert comparison.loc["test_scans_from_training_subjects", "earlyad"] == pytest.approx(2 / 24)
    assert comparison.loc["auc_MCI", "liu_2022"] == pytest.approx(0.626)
    assert "61%" in comparison.loc["auc_CN", "note"]
    assert out.comparison_plot.stat().st_size > 5000
    cost = read_tsv(out.training_cost).set_index("run")
    assert cost.loc["b", "train_seconds"] == 8.0 and cost.loc["b", "selected_epoch"] == 2


def test_grid_needs_exactly_one_selected_run():
    grid = pd.DataFrame({"run": ["a", "b"], "selected": [True, True]})
    with pytest.raises(ValueError, match="exactly one run selected"):
        grid_with_test(grid, {})


def test_comparison_formats_and_leakage():
    assert format_interval(0.9031, 0.85, 0.951) == "0.903 [0.850, 0.951]"
    assert format_interval(math.nan, 0.1, 0.2) == "n/a"
    assert leaked_share(pd.Series(["a", "b", "b", "c"]), pd.Series(["b"])) == 0.5
    table = comparison_table({"accuracy": {"estimate": 0.8, "lower": 0.7, "upper": 0.9}}, 10, 0.0)
    row = table.set_index("metric").loc["accuracy"]
    assert row["earlyad_ci"] == "0.800 [0.700, 0.900]" and row["study"] == 0.8244
    assert math.isnan(table.set_index("metric").loc["macro_auc", "earlyad"])


def test_training_cost_sums_epoch_seconds():
    logs = {"a": pd.DataFrame({"seconds": [1.0, 2.0, 3.0], "samples_per_second": [4, 5, 9]})}
    row = training_cost(logs, pd.DataFrame({"run": ["a"], "selected_epoch": [2]})).iloc[0]
    assert (row["epochs_run"], row["train_seconds"], row["seconds_per_epoch"]) == (3, 6.0, 2.0)
    assert row["median_samples_per_second"] == 5


# ------------------------------------------------------------------------- de-identification


def test_scrub_and_find_identifiers():
    reason = "ncc 0.381 < 0.5; mask_dice 0.664 < 0.8"
    assert scrub(reason) == "ncc < 0.5; mask_dice < 0.8"
    text = "cannot read /data/sub-ADNI002S0295/ses-M000/anat/x.nii.gz (002_S_0295, I118671)"
    assert scrub(text) == "cannot read <path> (<subject>, <image>)"
    assert find_identifiers(text) == ["sub-ADNI002S0295", "002_S_0295"]
    assert not find_identifiers(scrub(text))


def test_exclusion_counts_have_no_identifiers():
    qc = pd.DataFrame(
        {
            "participant_id": ["sub-ADNI002S0295", "sub-ADNI002S0296", "sub-ADNI002S0296"],
            "session_id": ["ses-M000", "ses-M000", "ses-M006"],
            "stage": ["qc", "qc", "preprocessing"],
            "reason": ["ncc 0.3 < 0.5", "ncc 0.41 < 0.5", "corrupt: /x/sub-ADNI002S0296.nii"],
        }
    )
    empty = pd.DataFrame(columns=["participant_id", "session_id", "stage", "reason"])
    counts = exclusion_counts({"labels": empty, "qc": qc})
    assert not find_identifiers(counts.to_csv())
    rows = {(r.table, r.stage, r.reason): (r.scans, r.subjects) for r in counts.itertuples()}
    assert rows[("qc", "qc", "ncc < 0.5")] == (2, 2)
    assert rows[("qc", "preprocessing", "corrupt: <path>")] == (1, 1)
    assert rows[("labels", "-", "none")] == (0, 0)
