"""Metrics, checkpoint selection, early stopping, determinism and a real kill-and-resume.

The training runs use a tiny network (width 0.0625) on twelve 100^3 volumes with the real
96^3 crop, one thread and no loader workers, so the whole module stays near a minute on two
shared cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter

from earlyad.train.metrics import (
    accuracy,
    balanced_accuracy,
    classification_metrics,
    macro_auc,
    per_class_auc,
    softmax,
)
from earlyad.train.trainer import (
    LOG_COLUMNS,
    PREDICTION_COLUMNS,
    TIMING_COLUMNS,
    Selection,
    TrainConfig,
    config_hash,
    load_model,
    train,
)

# --------------------------------------------------------------------------- metrics


def test_perfect_classifier():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs)
    assert m == {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_auc": 1.0}


def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # CN, right
            [0.3, 0.6, 0.1],  # CN, predicted MCI
            [0.2, 0.5, 0.3],  # MCI, right
            [0.1, 0.8, 0.1],  # MCI, right
            [0.1, 0.3, 0.6],  # AD, right
            [0.4, 0.1, 0.5],  # AD, right
        ]
    )
    pred = probs.argmax(1)
    assert accuracy(y, pred) == pytest.approx(5 / 6)
    assert balanced_accuracy(y, pred) == pytest.approx((1 / 2 + 1 + 1) / 3)
    # CN vs rest: positives 0.7, 0.3; negatives 0.2, 0.1, 0.1, 0.4 -> 7 of 8 pairs ordered
    # MCI vs rest: positives 0.5, 0.8; negatives 0.2, 0.6, 0.3, 0.1 -> 7 of 8
    # AD vs rest: positives 0.6, 0.5; negatives 0.1, 0.1, 0.3, 0.1 -> 8 of 8
    np.testing.assert_allclose(per_class_auc(y, probs), [7 / 8, 7 / 8, 1.0])
    assert macro_auc(y, probs) == pytest.approx((7 / 8 + 7 / 8 + 1) / 3)


def test_a_class_missing_from_y_true():
    y = np.array([0, 0, 2, 2])  # no MCI in this split
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5], [0.3, 0.1, 0.6]])
    aucs = per_class_auc(y, probs)
    assert math.isnan(aucs[1]) and aucs[0] == 1.0 and aucs[2] == 1.0
    assert macro_auc(y, probs) == 1.0  # mean over CN and AD only
    # recall over present classes; the MCI prediction (none here) would not count as a class
    assert balanced_accuracy(y, np.array([0, 1, 2, 2])) == pytest.approx((0.5 + 1) / 2)
    assert math.isnan(macro_auc(np.array([1, 1]), np.full((2, 3), 1 / 3)))


def test_auc_refuses_logits():
    logits = np.array([[2.0, -1.0, 0.5], [-0.3, 1.2, 0.1], [0.0, 0.2, 3.0]])
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="not logits"):
        macro_auc(y, logits)
    assert macro_auc(y, softmax(logits)) == 1.0
    np.testing.assert_allclose(softmax(logits).sum(1), 1.0)


# --------------------------------------------------------------------------- selection


def _row(auc: float, loss: float) -> dict[str, float]:
    return {"val_macro_auc": auc, "val_loss": loss}


def test_selection_on_auc_and_early_stopping():
    s = Selection("auc", patience=2)
    seq = [(0.6, 1.0), (0.7, 1.1), (0.7, 0.5), (0.7, 0.9), (0.65, 0.4), (0.8, 0.3)]
    improved = [s.update(e, _row(*v)) for e, v in enumerate(seq, start=1)]
    # an AUC tie goes to the lower validation loss, otherwise the earlier epoch stays
    assert improved == [True, True, True, False, False, True]
    assert s.best_epoch == 6 and not s.should_stop
    s.update(7, _row(0.5, 0.2))
    assert not s.should_stop
    s.update(8, _row(0.5, 0.2))
    assert s.should_stop and s.since_best == 2 and s.best_epoch == 6


def test_selection_on_loss_nan_and_no_patience():
    s = Selection("loss", patience=0)
    for e, loss in enumerate([1.0, 0.8, 0.9, 0.7, 0.75], start=1):
        s.update(e, _row(0.5, loss))
    assert s.best_epoch == 4 and not s.should_stop
    nan = Selection("auc", patience=3)
    assert nan.update(1, _row(float("nan"), 1.0))  # the first epoch is always kept
    assert nan.update(2, _row(0.6, 1.0))  # a real score beats NaN
    assert not nan.update(3, _row(float("nan"), 0.1))


def test_config_from_dict_and_hash():
    cfg = TrainConfig.from_dict({"lr": 0.001, "betas": [0.8, 0.99], "width": 0.125})
    assert cfg.betas == (0.8, 0.99) and cfg.model_config().width == 0.125
    assert cfg.model_config().input_size == cfg.crop == 96
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="select_on"):
        TrainConfig(select_on="accuracy")  # type: ignore[arg-type]
    h = config_hash(cfg, "abc")
    assert h == config_hash(replace(cfg, num_workers=4, threads=8, epochs=3), "abc")
    assert h != config_hash(replace(cfg, lr=0.002), "abc")
    assert h != config_hash(cfg, "abd")


# --------------------------------------------------------------------------- training runs


def make_tiny_data(root: Path, n_per_split=(6, 3, 3), shape=(100, 101, 102)) -> Path:
    """Twelve smooth float16 volumes in [0, 1] with a class-dependent bright cube."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, k = [], 0
    for split, n in zip(("train", "val", "test"), n_per_split, strict=True):
        for i in range(n):
            label = i % 3
            v = gaussian_filter(rng.random(shape, dtype=np.float32), 2)
            v[35:65, 35:65, 35:65] += 0.05 * label
            v = (v - v.min()) / (v.max() - v.min())
            path = root / f"sub-{k:02d}.npy"
            np.save(path, v.astype(np.float16))
            rows.append(
                {
                    "participant_id": f"sub-{k:02d}",
                    "session_id": "ses-M000",
                    "split": split,
                    "diagnosis": ("CN", "MCI", "AD")[label],
                    "label": label,
                    "path": str(path),
                    "shape": "x".join(map(str, shape)),
                }
            )
            k += 1
    index = root / "index.tsv"
    pd.DataFrame(rows).to_csv(index, sep="\t", index=False)
    return index


TINY = TrainConfig(
    epochs=5,
    batch_size=3,
    eval_batch_size=3,
    patience=0,
    seed=0,
    deterministic=True,
    threads=1,
    num_workers=0,
    width=0.0625,
)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def reference_run(tiny_index, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    result = train(tiny_index, root / "out", root / "state", TINY)
    return result, root / "out"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bitwise


def _model_columns(log_path: Path) -> pd.DataFrame:
    return pd.read_csv(log_path, sep="\t").drop(columns=list(TIMING_COLUMNS))


def test_outputs_log_and_predictions(reference_run):
    result, out = reference_run
    for name in ("log.tsv", "model.pt", "learning_curves.png", "device.txt"):
        assert (out / name).stat().st_size > 0, name
    log = pd.read_csv(out / "log.tsv", sep="\t")
    assert tuple(log.columns) == LOG_COLUMNS
    assert log.epoch.tolist() == [1, 2, 3, 4, 5] and result.epochs_run == 5
    assert (log.lr == TINY.lr).all() and (log.samples_per_second > 0).all()
    for split, n in (("val", 3), ("test", 3)):
        pred = pd.read_csv(out / f"predictions_{split}.tsv", sep="\t")
        assert tuple(pred.columns) == PREDICTION_COLUMNS and len(pred) == n
        probs = pred[["prob_CN", "prob_MCI", "prob_AD"]].to_numpy()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
        assert (pred.predicted_label == probs.argmax(1)).all()
    assert "device\tcpu" in (out / "device.txt").read_text()


def test_the_kept_checkpoint_is_the_best_validation_auc_epoch(reference_run):
    result, out = reference_run
    log = pd.read_csv(out / "log.tsv", sep="\t")
    # the highest val macro-AUC; among epochs tied on it, the lowest val loss (then the first)
    tied = log[log.val_macro_auc == log.val_macro_auc.max()]
    best = int(tied.epoch[tied.val_loss.idxmin()])
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == result.best_epoch == best
    assert ckpt["val_metrics"]["val_macro_auc"] == log.val_macro_auc.max()
    # the saved weights are that epoch's: its val predictions give the logged AUC
    pred = pd.read_csv(out / "predictions_val.tsv", sep="\t")
    probs = pred[["prob_CN", "prob_MCI", "prob_AD"]].to_numpy()
    assert macro_auc(pred.true_label, probs) == pytest.approx(log.val_macro_auc[best - 1])
    model, _ = load_model(out / "model.pt")
    assert model.config.width == TINY.width


def test_two_runs_with_the_same_seed_are_identical(reference_run, tiny_index, tmp_path):
    _, ref_out = reference_run
    train(tiny_index, tmp_path / "out", tmp_path / "state", TINY)
    _assert_same_weights(ref_out / "model.pt", tmp_path / "out" / "model.pt")
    pd.testing.assert_frame_equal(
        _model_columns(ref_out / "log.tsv"), _model_columns(tmp_path / "out" / "log.tsv")
    )


_CHILD = """
import json, sys
from earlyad.train.trainer import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
train(sys.argv[2], sys.argv[3], sys.argv[4], cfg)
"""


def _last_epoch(state: Path) -> int:
    try:
        return int(torch.load(state / "last.pt", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def _start_and_kill(index: Path, out: Path, state: Path, sig: int, at_epoch: int):
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(asdict(TINY)), str(index), str(out), str(state)],
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while _last_epoch(state) < at_epoch:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "training did not reach the epoch in time"
        time.sleep(0.05)
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    return child.returncode, err.decode()


def test_a_killed_run_resumes_to_the_uninterrupted_result(reference_run, tiny_index, tmp_path):
    """SIGKILL mid-training (no handler can run), then rerun: bitwise the same model."""
    _, ref_out = reference_run
    out, state = tmp_path / "out", tmp_path / "state"
    code, _ = _start_and_kill(tiny_index, out, state, signal.SIGKILL, at_epoch=2)
    assert code == -signal.SIGKILL
    killed_at = _last_epoch(state)
    assert 2 <= killed_at < TINY.epochs
    result = train(tiny_index, out, state, TINY)
    assert result.resumed_from == killed_at and result.epochs_run == TINY.epochs
    _assert_same_weights(ref_out / "model.pt", out / "model.pt")
    pd.testing.assert_frame_equal(
        _model_columns(ref_out / "log.tsv"), _model_columns(out / "log.tsv")
    )
    for name in ("predictions_val.tsv", "predictions_test.tsv"):
        assert (ref_out / name).read_text() == (out / name).read_text()


def test_sigterm_stops_non_zero_and_the_run_resumes(reference_run, tiny_index, tmp_path):
    _, ref_out = reference_run
    out, state = tmp_path / "out", tmp_path / "state"
    code, err = _start_and_kill(tiny_index, out, state, signal.SIGTERM, at_epoch=1)
    assert code != 0 and "TrainingInterrupted" in err
    assert not (out / "model.pt").exists()
    result = train(tiny_index, out, state, replace(TINY, num_workers=2))  # workers: same run
    assert result.resumed_from is not None and result.resumed_from >= 1
    _assert_same_weights(ref_out / "model.pt", out / "model.pt")


def test_only_the_training_loader_has_worker_processes(tiny_index, tmp_path, monkeypatch):
    """Evaluation crops are cheap and unblurred: they load in the training process, so a run
    with N workers has N worker processes, not N for each of four loaders."""
    import earlyad.train.trainer as trainer_module

    seen: list[tuple[bool, int]] = []
    real = trainer_module.make_loader

    def spy(volumes, config, **kw):
        seen.append((kw["train"], kw["num_workers"]))
        return real(volumes, config, **kw)

    monkeypatch.setattr(trainer_module, "make_loader", spy)
    train(tiny_index, tmp_path / "out", tmp_path / "state", replace(TINY, epochs=1, num_workers=2))
    assert sorted(seen) == [(False, 0), (False, 0), (False, 0), (True, 2)]


def test_a_finished_run_is_not_retrained_and_other_settings_start_fresh(
    reference_run, tiny_index, tmp_path, capsys
):
    _, ref_out = reference_run
    state = ref_out.parent / "state"
    again = train(tiny_index, tmp_path / "again", state, TINY)
    assert again.resumed_from == TINY.epochs and again.epochs_run == TINY.epochs
    _assert_same_weights(ref_out / "model.pt", tmp_path / "again" / "model.pt")
    capsys.readouterr()
    other = replace(TINY, epochs=1, lr=0.001)
    fresh_state = tmp_path / "state"
    fresh_state.mkdir()
    (fresh_state / "last.pt").write_bytes((state / "last.pt").read_bytes())
    result = train(tiny_index, tmp_path / "other", fresh_state, other)
    assert result.resumed_from is None and result.epochs_run == 1
    assert "starting fresh" in capsys.readouterr().err


def test_early_stopping_and_selection_on_loss(tiny_index, tmp_path):
    """lr = 0: the weights never change, so validation never improves after epoch 1."""
    cfg = replace(TINY, lr=0.0, epochs=10, patience=2, select_on="loss")
    result = train(tiny_index, tmp_path / "out", tmp_path / "state", cfg)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    log = pd.read_csv(tmp_path / "out" / "log.tsv", sep="\t")
    assert log.epoch.tolist() == [1, 2, 3] and log.val_loss.nunique() == 1


def test_a_bad_cached_volume_stops_training_with_its_name(tmp_path):
    index = make_tiny_data(tmp_path / "cache", n_per_split=(3, 3, 0))
    bad = np.load(tmp_path / "cache" / "sub-04.npy")
    bad[50, 50, 50] = np.nan
    np.save(tmp_path / "cache" / "sub-04.npy", bad)
    with pytest.raises(ValueError, match=r"sub-04 ses-M000 \(.*sub-04.npy\).*NaN"):
        train(index, tmp_path / "out", tmp_path / "state", TINY)
    np.save(tmp_path / "cache" / "sub-04.npy", bad[:, :95])
    with pytest.raises(ValueError, match="sub-04 ses-M000.*smaller than the 96"):
        train(index, tmp_path / "out", tmp_path / "state", TINY)
