"""Subject-level splits: no overlap, stratification, determinism, and leak refusal."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import make_labels

from earlyad.splits import (
    SPLITS,
    ManifestError,
    SplitConfig,
    SplitLeakError,
    check_disjoint,
    load_manifests,
    make_splits,
)
from earlyad.stages import run_split
from earlyad.tables import read_tsv


def _subjects(result, split):
    return set(result.manifests[split]["participant_id"])


def test_splits_are_subject_disjoint_and_cover_every_scan(labels_table):
    result = make_splits(labels_table, SplitConfig(seed=3))
    sets = [_subjects(result, s) for s in SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    total = sum(len(result.manifests[s]) for s in SPLITS)
    assert total == len(labels_table)
    # all visits of a subject travel together
    for s in SPLITS:
        df = result.manifests[s]
        assert (df.groupby("participant_id").size() == 2).all()


def test_splits_are_stratified_by_diagnosis():
    labels = make_labels(n_per_class=20, visits=1)
    result = make_splits(labels, SplitConfig(seed=1))
    for split, expected in (("train", 14), ("val", 3), ("test", 3)):
        counts = result.manifests[split]["diagnosis"].value_counts()
        assert counts.to_dict() == {"CN": expected, "MCI": expected, "AD": expected}


def test_split_is_deterministic_for_a_seed_and_changes_with_it(labels_table):
    a = make_splits(labels_table, SplitConfig(seed=7))
    b = make_splits(labels_table, SplitConfig(seed=7))
    c = make_splits(labels_table, SplitConfig(seed=8))
    for s in SPLITS:
        pd.testing.assert_frame_equal(a.manifests[s], b.manifests[s])
    assert any(_subjects(a, s) != _subjects(c, s) for s in SPLITS)


def test_every_class_reaches_val_and_test_even_when_small():
    labels = make_labels(n_per_class=4, visits=1)
    result = make_splits(labels, SplitConfig(seed=0))
    for split in ("val", "test"):
        assert set(result.manifests[split]["diagnosis"]) == {"CN", "MCI", "AD"}


def test_balance_tests_are_reported(labels_table):
    result = make_splits(labels_table, SplitConfig(seed=0))
    assert set(result.balance["variable"]) == {"age", "sex", "diagnosis"}
    assert result.balance["p_value"].between(0, 1).all()
    assert result.balance["balanced"].all()


def test_baseline_only_eval_keeps_first_visit_and_lists_the_rest(labels_table):
    result = make_splits(labels_table, SplitConfig(seed=0, baseline_only_eval=True))
    for split in ("val", "test"):
        df = result.manifests[split]
        assert (df["session_id"] == "ses-M000").all()
    assert (result.manifests["train"]["session_id"] == "ses-M006").any()
    n_eval_subjects = len(_subjects(result, "val")) + len(_subjects(result, "test"))
    assert len(result.exclusions) == n_eval_subjects
    assert result.exclusions["reason"].str.contains("baseline_only_eval").all()


def test_leaking_manifests_are_refused_naming_the_subject(labels_table):
    train = labels_table.iloc[:10]
    test = labels_table.iloc[9:12]  # row 9 shares a subject with train
    leaked = labels_table.iloc[9]["participant_id"]
    with pytest.raises(SplitLeakError, match=f"{leaked} in test and train"):
        check_disjoint({"train": train, "val": labels_table.iloc[0:0], "test": test})


def test_user_manifests_are_checked_and_joined(tmp_path, labels_table):
    paths = {}
    subjects = sorted(labels_table["participant_id"].unique())
    groups = {"train": subjects[:20], "val": subjects[20:25], "test": subjects[25:]}
    for split, ids in groups.items():
        df = labels_table[labels_table.participant_id.isin(ids)][["participant_id", "session_id"]]
        paths[split] = tmp_path / f"{split}.tsv"
        df.to_csv(paths[split], sep="\t", index=False)
    manifests = load_manifests(paths, labels_table)
    assert set(manifests["val"]["participant_id"]) == set(groups["val"])
    assert "diagnosis" in manifests["test"].columns
    # a leaking user manifest is refused whoever wrote it
    leak = pd.concat(
        [pd.read_csv(paths["val"], sep="\t"), pd.read_csv(paths["train"], sep="\t")[:1]]
    )
    leak.to_csv(paths["val"], sep="\t", index=False)
    with pytest.raises(SplitLeakError, match=subjects[0]):
        load_manifests(paths, labels_table)


def test_user_manifest_naming_unknown_scan_is_refused(tmp_path, labels_table):
    paths = {s: tmp_path / f"{s}.tsv" for s in SPLITS}
    for s in SPLITS:
        paths[s].write_text("participant_id\tsession_id\nsub-X\tses-M000\n")
    with pytest.raises(ManifestError, match="sub-X ses-M000"):
        load_manifests(paths, labels_table)


def test_run_split_writes_manifests_and_reports(tmp_path, labels_table):
    labels_path = tmp_path / "labels.tsv"
    labels_table.to_csv(labels_path, sep="\t", index=False)
    run_split(labels_path, tmp_path / "splits", SplitConfig(seed=0))
    for name in ("train.tsv", "val.tsv", "test.tsv", "balance.tsv", "summary.tsv", "cohort.png"):
        assert (tmp_path / "splits" / name).stat().st_size > 0
    train = read_tsv(tmp_path / "splits" / "train.tsv")
    assert list(train.columns[:4]) == ["participant_id", "session_id", "diagnosis", "label"]
    summary = read_tsv(tmp_path / "splits" / "summary.tsv")
    assert summary["scans"].sum() == len(labels_table)
