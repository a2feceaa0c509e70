"""Parity of the C++/LibTorch twin (cpp/, train_app and test_app) with the Python trainer.

The binaries come from ``scripts/build_cpp.sh`` (``cpp/build``, or ``$EARLYAD_CPP_BUILD``).
Outside CI a missing build skips these tests; in CI (``CI=true``) the setup script builds the
twin, so a missing build fails them.

What is checked, each against the Python code on the same input:
- the .npy reader's axis order, on an asymmetric volume (the study's C++ read Z, Y, X);
- crop and margin-only blur, at the border and inside, several sigmas;
- the seeded initial weights (bitwise), logits (1e-4 relative), and one training step in
  float64: loss, every parameter gradient and every parameter after Adam;
- a two-epoch deterministic training run on a tiny cache: the same log and predictions
  columns and values, and the C++ checkpoint loading strictly in Python (and back).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from test_trainer import TINY, make_tiny_data
from test_workflow import snakemake as run_snakemake
from test_workflow import tiny_config

from earlyad.config import ConfigError, validate_config
from earlyad.train.cpp_twin import find_app, plan_epochs, train_cpp, train_shapes, write_plan
from earlyad.train.data import (
    AugmentConfig,
    SampleParams,
    crop_and_blur,
    epoch_order,
    sample_params,
)
from earlyad.train.grid import summarise_grid
from earlyad.train.model import ClassifierCNN, ModelConfig
from earlyad.train.trainer import (
    LOG_COLUMNS,
    PREDICTION_COLUMNS,
    TIMING_COLUMNS,
    TrainConfig,
    load_model,
    train,
)

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SMALL = ModelConfig(width=0.0625)


@pytest.fixture(scope="module")
def apps() -> dict[str, Path]:
    try:
        return {name: find_app(name) for name in ("train_app", "test_app")}
    except FileNotFoundError as err:
        if IN_CI:
            pytest.fail(f"CI builds the C++ twin in scripts/setup.sh, but: {err}")
        pytest.skip(str(err))


def run_app(app: Path, *args: object, expect_ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(app), *map(str, args)], capture_output=True, text=True, timeout=600, check=False
    )
    if expect_ok:
        assert done.returncode == 0, f"{app.name} {args} failed:\n{done.stderr}"
    return done


def save_model(model: ClassifierCNN, path: Path) -> Path:
    torch.save({"state_dict": dict(model.state_dict()), "model_config": vars(model.config)}, path)
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- data


def test_npy_reader_keeps_numpy_axis_order(apps, tmp_path):
    x, y, z = np.meshgrid(np.arange(5), np.arange(7), np.arange(9), indexing="ij")
    volume = (100 * x + 10 * y + z).astype(np.float16)  # v[x, y, z] = 100x + 10y + z, exact
    np.save(tmp_path / "v.npy", volume)
    run_app(apps["test_app"], "read", tmp_path / "v.npy", tmp_path / "out.pt")
    read = load(tmp_path / "out.pt")["volume"]
    assert tuple(read.shape) == (5, 7, 9)
    assert read[1, 2, 3] == 123 and read[4, 0, 0] == 400 and read[0, 6, 8] == 68
    assert torch.equal(read, torch.from_numpy(volume.astype(np.float32)))


def test_non_cubic_crop_offsets_follow_the_same_axes(apps, tmp_path):
    x, y, z = np.meshgrid(np.arange(12), np.arange(14), np.arange(16), indexing="ij")
    volume = (100 * x + 10 * y + z).astype(np.float16)
    np.save(tmp_path / "v.npy", volume)
    run_app(apps["test_app"], "sample", tmp_path / "v.npy", 1, 3, 5, 0, 8, 4.0, tmp_path / "s.pt")
    sample = load(tmp_path / "s.pt")["sample"].numpy()
    assert sample[0, 0, 0] == 100 * 1 + 10 * 3 + 5
    np.testing.assert_array_equal(sample, volume[1:9, 3:11, 5:13].astype(np.float32))


@pytest.mark.parametrize(
    ("offset", "sigma"),
    [((0, 0, 0), 0.0), ((2, 3, 4), 0.3), ((0, 5, 6), 1.5), ((4, 0, 6), 0.9), ((1, 2, 3), 1.49)],
)
def test_crop_and_blur_matches_the_python_path_bitwise(apps, tmp_path, offset, sigma):
    rng = np.random.default_rng(1)
    volume = rng.random((100, 101, 102), dtype=np.float32).astype(np.float16)
    np.save(tmp_path / "v.npy", volume)
    expected = crop_and_blur(volume, SampleParams(offset, sigma), 96, 4.0)
    run_app(apps["test_app"], "sample", tmp_path / "v.npy", *offset, repr(sigma), 96, 4.0,
            tmp_path / "s.pt")  # fmt: skip
    got = load(tmp_path / "s.pt")["sample"].numpy()
    assert got.shape == expected.shape == (96, 96, 96)
    np.testing.assert_array_equal(got, expected)  # the same ATen ops in the same order


def test_plan_is_the_loaders_draws(tmp_path):
    index = make_tiny_data(tmp_path / "cache", n_per_split=(4, 1, 1))
    shapes = train_shapes(index)
    aug = AugmentConfig(crop=96)
    plan = plan_epochs(shapes, seed=3, epochs=2, augment=aug)
    assert len(plan) == 8
    for epoch in (1, 2):
        rows = plan[plan["epoch"] == epoch]
        assert list(rows["row"]) == epoch_order(3, epoch, 4, shuffle=True)
        for r in rows.itertuples():
            p = sample_params(3, epoch, r.row, shapes[r.row], aug, train=True)
            assert (r.offset_x, r.offset_y, r.offset_z) == p.offset and r.sigma == p.sigma
    out = tmp_path / "plan.tsv"
    write_plan(index, out, TrainConfig(seed=3, epochs=2))
    back = pd.read_csv(out, sep="\t")
    assert back["sigma"].tolist() == plan["sigma"].tolist()  # floats round-trip exactly


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    "config",
    [SMALL, ModelConfig(width=0.0625, norm_type="batch", head_relu=False, variant="liu2022")],
    ids=["instance", "batch-liu-norelu"],
)
def test_same_seed_gives_bitwise_the_same_initial_weights(apps, tmp_path, config):
    torch.manual_seed(7)
    model = ClassifierCNN(config)
    save_model(model, tmp_path / "cfg.pt")
    run_app(apps["test_app"], "init", tmp_path / "cfg.pt", 7, tmp_path / "init.pt")
    cpp = load(tmp_path / "init.pt")["state_dict"]
    py = model.state_dict()
    assert set(cpp) == set(py)
    for key, value in py.items():
        assert torch.equal(cpp[key], value), key


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_logits_agree_for_the_same_weights_and_input(apps, tmp_path, norm):
    torch.manual_seed(1)
    model = ClassifierCNN(ModelConfig(width=0.0625, norm_type=norm)).eval()
    with torch.no_grad():  # a model that has moved away from its initialisation
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 1, 96, 96, 96)
    save_model(model, tmp_path / "m.pt")
    torch.save({"x": x}, tmp_path / "x.pt")
    run_app(apps["test_app"], "forward", tmp_path / "m.pt", tmp_path / "x.pt", tmp_path / "o.pt")
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(load(tmp_path / "o.pt")["logits"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_one_step_loss_gradients_and_adam_update_agree(apps, tmp_path, norm):
    """float64, so that the comparison tests the computation and not float32 rounding order:
    any difference in the graph (a layer, an init, a reduction) is far above 1e-9."""
    torch.manual_seed(2)
    model = ClassifierCNN(ModelConfig(width=0.0625, norm_type=norm))
    x = torch.rand(3, 1, 96, 96, 96, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    save_model(model, tmp_path / "m.pt")
    torch.save({"x": x, "y": y}, tmp_path / "b.pt")
    lr, b1, b2 = 0.001, 0.9, 0.999
    run_app(apps["test_app"], "step", tmp_path / "m.pt", tmp_path / "b.pt", tmp_path / "o.pt",
            lr, b1, b2, "double")  # fmt: skip
    cpp = load(tmp_path / "o.pt")

    model = model.double().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2))
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    tol = {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(cpp["logits"], logits.detach(), **tol)
    torch.testing.assert_close(cpp["loss"], loss.detach(), **tol)
    names = [n for n, _ in model.named_parameters()]
    assert set(cpp["grads"]) == set(names)
    for name, p in model.named_parameters():
        torch.testing.assert_close(cpp["grads"][name], p.grad, **tol, msg=name)
    optimizer.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(cpp["after"][name], value, **tol, msg=name)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def twin_runs(apps, tmp_path_factory):
    """The same two-epoch run by both implementations (one thread, deterministic)."""
    root = tmp_path_factory.mktemp("twin")
    index = make_tiny_data(root / "cache")
    config = TrainConfig(**{**vars(TINY), "epochs": 2, "train_eval_max": 4})
    train(index, root / "py", root / "py_state", config)
    train_cpp(index, root / "cpp", root / "cpp_work", config, apps["train_app"])
    return root, index


def test_two_epochs_give_the_same_log(twin_runs):
    root, _ = twin_runs
    py = pd.read_csv(root / "py" / "log.tsv", sep="\t")
    cpp = pd.read_csv(root / "cpp" / "log.tsv", sep="\t")
    assert tuple(cpp.columns) == tuple(py.columns) == LOG_COLUMNS
    model_columns = [c for c in LOG_COLUMNS if c not in TIMING_COLUMNS]
    pd.testing.assert_frame_equal(cpp[model_columns], py[model_columns], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("split", ["val", "test"])
def test_two_epochs_give_the_same_predictions(twin_runs, split):
    root, _ = twin_runs
    py = pd.read_csv(root / "py" / f"predictions_{split}.tsv", sep="\t")
    cpp = pd.read_csv(root / "cpp" / f"predictions_{split}.tsv", sep="\t")
    assert tuple(cpp.columns) == tuple(py.columns) == PREDICTION_COLUMNS
    pd.testing.assert_frame_equal(cpp, py, rtol=1e-4, atol=1e-6)


def test_cpp_checkpoint_loads_in_python_and_reproduces_its_predictions(twin_runs, apps):
    root, index = twin_runs
    model, ckpt = load_model(root / "cpp" / "model.pt")  # strict state-dict load
    py_ckpt = load(root / "py" / "model.pt")
    assert set(ckpt) >= set(py_ckpt)
    assert ckpt["config"] == py_ckpt["config"] and ckpt["model_config"] == py_ckpt["model_config"]
    assert ckpt["epoch"] == py_ckpt["epoch"]
    summary = summarise_grid({"py": root / "py" / "model.pt", "cpp": root / "cpp" / "model.pt"})
    assert summary["selected_epoch"].tolist() == [py_ckpt["epoch"]] * 2
    # ... and Python's own checkpoint predicts in C++ what Python predicted
    out = root / "cpp_predicts_py.tsv"
    run_app(apps["test_app"], "predict", root / "py" / "model.pt", index, "val", out, 3, 1)
    expected = pd.read_csv(root / "py" / "predictions_val.tsv", sep="\t")
    pd.testing.assert_frame_equal(pd.read_csv(out, sep="\t"), expected, rtol=1e-4, atol=1e-6)
    assert (root / "cpp" / "learning_curves.png").stat().st_size > 0
    assert "LibTorch" in (root / "cpp" / "device.txt").read_text()


def test_train_app_names_a_stale_plan(twin_runs, apps, tmp_path):
    root, _ = twin_runs
    run = (root / "cpp_work" / "run.yaml").read_text()
    plan = pd.read_csv(root / "cpp_work" / "plan.tsv", sep="\t")
    plan[plan["epoch"] == 1].to_csv(tmp_path / "short.tsv", sep="\t", index=False)
    bad = tmp_path / "run.yaml"
    bad.write_text(run.replace(str(root / "cpp_work" / "plan.tsv"), str(tmp_path / "short.tsv")))
    done = run_app(apps["train_app"], bad, expect_ok=False)
    assert done.returncode == 1
    assert "short.tsv: epoch 2 is missing" in done.stderr


def test_train_app_refuses_an_unknown_setting(twin_runs, apps, tmp_path):
    root, _ = twin_runs
    run = (root / "cpp_work" / "run.yaml").read_text()
    bad = tmp_path / "run.yaml"
    bad.write_text(run.replace("hyperparameters:\n", "hyperparameters:\n  learning_rate: 1\n"))
    done = run_app(apps["train_app"], bad, expect_ok=False)
    assert done.returncode == 1 and "unknown training setting 'learning_rate'" in done.stderr


# --------------------------------------------------------------------------- workflow wiring


def test_grid_names_may_not_take_the_twins_suffix():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert validate_config(config)["training"]["impl"] == "python"
    config["training"]["grid"] = [{"name": "run_cpp"}]
    with pytest.raises(ConfigError, match="run name 'run_cpp' ends in '_cpp'"):
        validate_config(config)


@pytest.mark.parametrize(
    ("impl", "python_runs", "cpp_runs"), [("python", 1, 0), ("cpp", 0, 1), ("both", 1, 1)]
)
def test_impl_selects_the_trainers_in_the_dag(tmp_path, impl, python_runs, cpp_runs):
    cfg = tiny_config(tmp_path, training={"impl": impl})
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", "--quiet", "rules").stdout
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts.get("train", 0) == python_runs
    assert counts.get("train_cpp", 0) == cpp_runs
    assert counts.get("build_cpp", 0) == min(cpp_runs, 1)
