"""End to end: the Snakemake DAG on a tiny synthetic cohort, with the real Clinica conversion.

One workflow run (module-scoped fixture, a few minutes on 2 cores) feeds several assertions about
what a user relies on: subject-disjoint stratified manifests, per-visit labels that match the
cohort's ground truth, a report, and reruns limited to stale stages.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from earlyad.deidentify import find_identifiers
from earlyad.splits import SPLITS
from earlyad.tables import read_tsv

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    cores: int | None = 2,
    timeout: int | None = None,
) -> subprocess.CompletedProcess:
    """Run snakemake from the repo's Snakefile in ``workdir`` with the venv's tools on PATH.

    ``cores=None`` leaves the cores to a ``--profile``; ``timeout`` (seconds) wraps the run in
    coreutils' ``timeout``, so a hung cluster run fails instead of hanging the suite.
    """
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile")]
    cmd += ["--cores", str(cores)] if cores is not None else []
    cmd += list(args)
    wrapped = ["timeout", str(timeout), *cmd] if timeout is not None else cmd
    proc = subprocess.run(wrapped, cwd=workdir, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def tiny_config(workdir: Path, **changes: dict) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["synthetic"].update(n_subjects=9, mean_visits=1.4, n_dicom=1, seed=7)
    config["preprocessing"].update(template_max_images=4, template_iterations=1)
    config["training"].update(
        epochs=2,
        batch_size=4,
        eval_batch_size=4,
        width=0.0625,
        train_eval_max=4,
        num_workers=0,
        threads=2,
    )
    for section, values in changes.items():
        config[section].update(values)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run(workflow_run: Path) -> Path:
    """The tiny-cohort run (conftest.workflow_run, shared with the rerun and Slurm tests)."""
    return workflow_run


def test_manifests_are_subject_disjoint_and_stratified(run):
    manifests = {s: read_tsv(run / "results" / "splits" / f"{s}.tsv") for s in SPLITS}
    subjects = [set(m["participant_id"]) for m in manifests.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    for split, df in manifests.items():
        assert set(df["diagnosis"]) == {"CN", "MCI", "AD"}, split
        assert df["image_path"].map(lambda p: (run / p).exists()).all()  # relative to workdir


def test_labels_are_the_visit_diagnoses_of_the_ground_truth(run):
    labels = read_tsv(run / "results" / "labels" / "labels.tsv")
    truth = pd.read_csv(run / "results" / "synthetic" / "ground_truth" / "cohort.tsv", sep="\t")
    merged = labels.merge(truth, on=["participant_id", "session_id"], suffixes=("", "_truth"))
    exclusions = read_tsv(run / "results" / "labels" / "exclusions.tsv")
    # every ground-truth scan is either labelled or listed as excluded, never silently dropped
    assert len(merged) + len(exclusions) == len(truth)
    assert (merged["diagnosis"] == merged["diagnosis_truth"]).all()
    # diagnoses progress between visits in the synthetic cohort, and labels follow them
    per_subject = labels.groupby("participant_id")["diagnosis"].nunique()
    assert len(labels) > labels["participant_id"].nunique()
    assert set(labels["sex"]) <= {"M", "F"} and labels["age"].between(50, 100).all()
    assert per_subject.max() >= 1


def test_second_run_has_nothing_to_do_and_seed_change_reruns_only_the_split(run):
    cfg = str(run / "config.yaml")
    out = snakemake(run, "--configfile", cfg, "-n").stdout
    assert "Nothing to be done" in out
    tiny_config(run, splits={"seed": 5})
    out = snakemake(run, "--configfile", cfg, "-n").stdout
    assert "checkpoint split:" in out and "Params have changed" in out
    for rule in ("synthesize", "adni_to_bids", "labels", "check_adni", "t1_linear"):
        assert f"rule {rule}:" not in out, out
    # what follows the split (template, normalization, training) is re-planned once the new
    # manifests exist: Snakemake re-evaluates the DAG after a checkpoint
    assert "checkpoint jobs" in out
    tiny_config(run)


def test_changing_a_runs_lr_reruns_training_only(run):
    cfg = str(run / "config.yaml")
    tiny_config(run, training={"lr": 0.001})
    out = snakemake(run, "--configfile", cfg, "-n").stdout
    tiny_config(run)
    assert "rule train:" in out and "rule grid_summary:" in out
    for rule in ("checkpoint split", "rule t1_linear", "rule study_template", "rule normalize"):
        assert f"{rule}:" not in out, out


def test_preprocessing_outputs_and_tensor_cache(run):
    qc = read_tsv(run / "results" / "qc" / "qc.tsv")
    labels = read_tsv(run / "results" / "labels" / "labels.tsv")
    assert len(qc) == len(labels)  # every labelled scan has a QC verdict
    index = read_tsv(run / "results" / "cache" / "index.tsv")
    assert set(index["participant_id"] + index["session_id"]) == set(
        (qc.participant_id + qc.session_id)[qc.passed.astype(str) == "True"]
    )
    assert len(index) >= len(qc) - 1
    first = index.iloc[0]
    volume = np.load(run / first["path"], mmap_mode="r")
    assert volume.dtype == np.float16 and min(volume.shape) >= 96
    t1 = next((run / "results" / "t1_linear").glob("sub-*/ses-*/*_desc-Crop_res-1x1x1_T1w.nii.gz"))
    assert nib.load(t1).shape == (169, 208, 179)
    assert list((run / "results" / "qc" / "montages").glob("*.png"))


def test_study_template_used_training_scans_only(run):
    used = json.loads((run / "results" / "template" / "study_template_inputs.json").read_text())
    text = json.dumps(used)
    train = set(read_tsv(run / "results" / "splits" / "train.tsv")["participant_id"])
    others = set(read_tsv(run / "results" / "splits" / "val.tsv")["participant_id"]) | set(
        read_tsv(run / "results" / "splits" / "test.tsv")["participant_id"]
    )
    assert any(pid in text for pid in train)
    assert not any(pid in text for pid in others)


def test_training_outputs(run):
    name = yaml.safe_load((run / "config.yaml").read_text())["training"]["grid"][0]["name"]
    log = read_tsv(run / "results" / "training" / name / "log.tsv")
    assert list(log["epoch"]) == [1, 2]
    preds = read_tsv(run / "results" / "training" / name / "predictions_test.tsv")
    probs = preds[["prob_CN", "prob_MCI", "prob_AD"]].sum(axis=1)
    assert np.allclose(probs, 1.0, atol=1e-4)
    summary = read_tsv(run / "results" / "training" / "grid_summary.tsv")
    assert summary["selected"].astype(str).tolist() == ["True"]


def test_gradcam_outputs(run):
    name = yaml.safe_load((run / "config.yaml").read_text())["training"]["grid"][0]["name"]
    out = run / "results" / "gradcam" / name
    preds = read_tsv(run / "results" / "training" / name / "predictions_test.tsv")
    scans = read_tsv(out / "scans.tsv")
    assert len(scans) == len(preds) and set(scans["threshold_mode"]) == {"percentile"}
    for row in scans.itertuples():
        stem = f"{row.participant_id}_{row.session_id}"
        norm = run / "results" / "normalized" / row.participant_id / row.session_id
        scan = nib.load(norm / f"{stem}_desc-norm_T1w.nii.gz")
        cam = nib.load(out / "scans" / f"{stem}_gradcam.nii.gz")
        np.testing.assert_allclose(cam.affine, scan.affine)  # overlays the scan in any viewer
        assert cam.shape == scan.shape
        for plane in ("axial", "coronal", "sagittal"):
            assert (out / "scans" / f"{stem}_{plane}.gif").stat().st_size > 0
        assert (out / "montages" / f"{stem}.png").is_file()
    assert (out / "group_montage.png").is_file() and list((out / "group").glob("mean_*.nii.gz"))
    regions = read_tsv(out / "regions.tsv")
    assert {"hippocampus", "lateral_ventricles"} <= set(regions["region"])
    loc = read_tsv(out / "localization.tsv")
    # the synthetic cohort's atrophy masks went through each scan's own transforms
    assert loc["transforms"].iloc[0] == "exact (affines)"
    assert (loc["top_decile_chance"].astype(float) > 0).all()
    atlas = json.loads((run / "results" / "atlas" / "template_to_mni.json").read_text())
    assert atlas["max_shift_in_brain_mm"] < 10


def test_report_is_generated(run):
    snakemake(run, "--configfile", str(run / "config.yaml"), "--report", "report.html")
    html = (run / "report.html").read_text(errors="replace")
    assert "earlyad" in html and "cohort per split" in html
    assert "Explainability" in html


def test_broken_download_fails_before_clinica_naming_the_file(run, tmp_path):
    broken = tmp_path / "download"
    shutil.copytree(run / "results" / "synthetic" / "clinical", broken / "clinical")
    (broken / "ADNI").symlink_to(run / "results" / "synthetic" / "ADNI")
    (broken / "clinical" / "MPRAGEMETA.csv").unlink()
    cfg = tiny_config(
        tmp_path,
        dataset={
            "source": "adni",
            "adni_dir": str(broken / "ADNI"),
            "clinical_dir": str(broken / "clinical"),
        },
    )
    proc = snakemake(tmp_path, "--configfile", str(cfg), check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "check_adni" / "check_adni.log").read_text()
    assert "MPRAGEMETA.csv" in log
    assert not (tmp_path / "results" / "bids").exists()


def test_invalid_config_stops_with_the_key_name(tmp_path):
    cfg = tiny_config(tmp_path, splits={"sed": 1})
    proc = snakemake(tmp_path, "--configfile", str(cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "config key 'splits.sed' is not a known setting" in proc.stdout + proc.stderr


def test_bids_source_skips_conversion_and_labels_the_same_scans(run, tmp_path):
    cfg = tiny_config(
        tmp_path, dataset={"source": "bids", "bids_dir": str(run / "results" / "bids")}
    )
    proc = snakemake(tmp_path, "results/labels/labels.tsv", "--configfile", str(cfg))
    out = proc.stdout + proc.stderr
    assert "rule labels:" in out
    assert "adni_to_bids" not in out and "synthesize" not in out
    ours = read_tsv(tmp_path / "results" / "labels" / "labels.tsv")
    theirs = read_tsv(run / "results" / "labels" / "labels.tsv")
    key = ["participant_id", "session_id", "diagnosis", "age", "sex"]
    pd.testing.assert_frame_equal(ours[key], theirs[key])


def test_evaluation_outputs(run):
    name = yaml.safe_load((run / "config.yaml").read_text())["training"]["grid"][0]["name"]
    out = run / "results" / "evaluation" / name
    for f in ("metrics.json", "metrics.tsv", "confusion_matrix.png", "radar.png", "roc.png"):
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["bootstrap"]["unit"] == "subject" and set(doc["splits"]) == {"val", "test"}
    preds = read_tsv(run / "results" / "training" / name / "predictions_test.tsv")
    test = doc["splits"]["test"]
    assert test["scans"] == len(preds) and sum(map(sum, test["confusion_matrix"])) == len(preds)
    acc = test["metrics"]["accuracy"]
    assert acc["estimate"] == pytest.approx((preds.true_label == preds.predicted_label).mean())
    assert acc["lower"] <= acc["estimate"] <= acc["upper"]
    summary = read_tsv(run / "results" / "evaluation" / "grid_summary.tsv")
    chosen = summary[summary["selected"].astype(str) == "True"]
    assert len(chosen) == 1 and chosen["test_accuracy"].iloc[0] == pytest.approx(acc["estimate"])
    comparison = read_tsv(run / "results" / "evaluation" / "comparison.tsv").set_index("metric")
    assert comparison.loc["test_scans_from_training_subjects", "earlyad"] == 0.0
    assert comparison.loc["macro_auc", "study"] == pytest.approx(0.903)
    counts = read_tsv(run / "results" / "report" / "exclusion_counts.tsv")
    assert set(counts["table"]) == {"labels", "splits", "qc"}


def _report_text(zip_path: Path) -> str:
    """Every file of a zipped Snakemake report as text, base64-embedded files decoded too."""
    parts = []
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
            parts.append(member)
            parts.append(archive.read(member).decode("utf-8", errors="replace"))
    text = "\n".join(parts)
    for blob in re.findall(r"base64,([A-Za-z0-9+/=]{8,})", text):
        parts.append(base64.b64decode(blob + "==").decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_report_holds_every_category_and_the_evaluation(run, tmp_path):
    snakemake(run, "--configfile", str(run / "config.yaml"), "--report", str(tmp_path / "r.zip"))
    text = _report_text(tmp_path / "r.zip")
    for category in ("Data", "Preprocessing", "Training", "Evaluation", "Performance"):
        assert category in text, category
    for name in ("metrics.tsv", "confusion_matrix.png", "roc.png", "radar.png", "comparison.tsv"):
        assert name in text, name
    assert "leaked" in text or "shared subjects" in text  # the comparison's caption
    # the positive control of the shareable test: a normal report does name subjects
    assert find_identifiers(text)


def test_shareable_report_names_no_subject(run, tmp_path):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["report"]["shareable"] = True
    shareable = tmp_path / "shareable.yaml"
    shareable.write_text(yaml.safe_dump(config))
    snakemake(run, "--configfile", str(shareable), "--report", str(tmp_path / "r.zip"))
    text = _report_text(tmp_path / "r.zip")
    assert "confusion_matrix.png" in text and "exclusion_counts.tsv" in text
    assert not find_identifiers(text), sorted(set(find_identifiers(text)))[:5]


# ------------------------------------------------------------------ bad scans and the backends


def _copy_of_run(run: Path, dest: Path) -> Path:
    """A copy of the finished run (outputs, mtimes and Snakemake's metadata) to perturb."""
    shutil.copytree(run, dest, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    return dest


def _a_test_scan(workdir: Path, which: int = 0) -> tuple[str, str, Path]:
    """A scan of the test split (neither in the study template nor in training)."""
    row = read_tsv(workdir / "results" / "splits" / "test.tsv").iloc[which]
    pid, ses = row["participant_id"], row["session_id"]
    return pid, ses, workdir / "results" / "bids" / pid / ses / "anat" / f"{pid}_{ses}_T1w.nii.gz"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_a_corrupt_scan_is_excluded_by_name_and_the_run_goes_on(run, tmp_path):
    work = _copy_of_run(run, tmp_path / "work")
    pid, ses, image = _a_test_scan(work)
    _truncate(image)
    proc = snakemake(
        work,
        "results/cache/index.tsv",
        "--configfile",
        str(work / "config.yaml"),
        "--rerun-triggers",
        "mtime",
    )
    out = proc.stdout + proc.stderr  # Snakemake 9 logs jobs on stderr
    assert "rule t1_linear:" in out and "rule study_template:" not in out
    exclusions = read_tsv(work / "results" / "qc" / "exclusions.tsv")
    row = exclusions[(exclusions.participant_id == pid) & (exclusions.session_id == ses)]
    assert len(row) == 1 and row.iloc[0]["stage"] == "preprocessing", exclusions
    assert image.name in row.iloc[0]["reason"]
    index = read_tsv(work / "results" / "cache" / "index.tsv")
    before = read_tsv(run / "results" / "cache" / "index.tsv")
    kept_before = set(before.participant_id + before.session_id)
    assert pid + ses not in set(index.participant_id + index.session_id)
    assert len(index) == len(before) - int(pid + ses in kept_before)
    # the report lists it
    snakemake(work, "--configfile", str(work / "config.yaml"), "--report", "report.html")
    assert pid in (work / "report.html").read_text(errors="replace")


def test_on_bad_scan_fail_stops_naming_the_file(run, tmp_path):
    work = _copy_of_run(run, tmp_path / "work")
    pid, ses, image = _a_test_scan(work)
    _truncate(image)
    cfg = tiny_config(work, preprocessing={"on_bad_scan": "fail"})
    proc = snakemake(
        work,
        f"results/t1_linear/{pid}/{ses}",
        "--configfile",
        str(cfg),
        "--rerun-triggers",
        "mtime",
        check=False,
    )
    assert proc.returncode != 0
    log = (work / "logs" / "t1_linear" / f"{pid}_{ses}.log").read_text()
    assert image.name in log and "T1LinearError" in log
    assert not (work / "results" / "t1_linear" / pid / ses).exists()


def test_clinica_backend_flows_through_the_dag_into_the_cache(run, tmp_path):
    """The real ``clinica run t1-linear`` on one test scan, then normalization and the cache."""
    work = _copy_of_run(run, tmp_path / "work")
    pid, ses, _ = _a_test_scan(work, which=-1)
    cfg = tiny_config(work, preprocessing={"backend": "clinica"})
    common = ("--configfile", str(cfg), "--rerun-triggers", "mtime")
    snakemake(work, f"results/t1_linear/{pid}/{ses}", "--force", *common)
    folder = work / "results" / "t1_linear" / pid / ses
    status = json.loads((folder / "status.json").read_text())
    assert status["backend"] == "clinica" and status["ok"], status
    t1 = nib.load(next(folder.glob("*_desc-Crop_res-1x1x1_T1w.nii.gz")))
    ref = nib.load(work / "results" / "templates" / "ref_cropped_template.nii.gz")
    assert t1.shape == (169, 208, 179)
    np.testing.assert_allclose(t1.affine, ref.affine)
    proc = snakemake(work, "results/cache/index.tsv", *common)
    out = proc.stdout + proc.stderr
    assert "rule normalize:" in out and "rule study_template:" not in out
    qc = read_tsv(work / "results" / "qc" / "qc.tsv")
    assert len(qc[(qc.participant_id == pid) & (qc.session_id == ses)]) == 1
    npy = next((work / "results" / "normalized" / pid / ses).glob("*.npy"))
    other = next((run / "results" / "normalized" / pid / ses).glob("*.npy"))
    assert np.load(npy, mmap_mode="r").shape == np.load(other, mmap_mode="r").shape
    assert npy.stat().st_mtime > other.stat().st_mtime


def test_cpp_twin_trains_beside_python(run):
    """training.impl both: the C++ twin is built once and trains each run as <name>_cpp,
    with the same outputs, and the grid summary lists both implementations."""
    cfg = str(run / "config.yaml")
    tiny_config(run, training={"impl": "both"})
    try:
        out = snakemake(run, "--configfile", cfg).stdout
    finally:
        tiny_config(run)
    summary = read_tsv(run / "results" / "training" / "grid_summary.tsv")
    name = yaml.safe_load((run / "config.yaml").read_text())["training"]["grid"][0]["name"]
    assert "rule train:" not in out  # the Python run is up to date
    py_dir, cpp_dir = (run / "results" / "training" / n for n in (name, f"{name}_cpp"))
    for table in ("log.tsv", "predictions_val.tsv", "predictions_test.tsv"):
        py, cpp = read_tsv(py_dir / table), read_tsv(cpp_dir / table)
        assert list(cpp.columns) == list(py.columns) and len(cpp) == len(py)
    probs = ["prob_CN", "prob_MCI", "prob_AD"]
    py, cpp = (read_tsv(d / "predictions_test.tsv") for d in (py_dir, cpp_dir))
    assert np.allclose(cpp[probs].astype(float), py[probs].astype(float), atol=1e-3)
    assert sorted(summary["run"]) == sorted([name, f"{name}_cpp"])
    snakemake(run, "--configfile", cfg)  # back to the Python-only summary: later tests rerun
