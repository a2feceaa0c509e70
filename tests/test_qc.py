"""QC table, exclusions and the tensor-cache index (no images needed: records and tiny .npy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earlyad.preprocess.qc import (
    CACHE_INDEX_COLUMNS,
    QC_COLUMNS,
    QCThresholds,
    assemble_qc,
    cache_index,
    plot_qc,
)
from earlyad.tables import EXCLUSION_COLUMNS

GOOD = {"ncc": 0.85, "mask_dice": 0.93, "brain_fraction_in_box": 1.0, "nan_voxels": 0}


def _record(pid: str, split: str = "train", **kw: object) -> dict[str, object]:
    base = {
        "participant_id": pid,
        "session_id": "ses-M000",
        "split": split,
        "diagnosis": "AD",
        "label": 2,
        "status": "ok",
        "shape": [113, 139, 119],
        "voxel_size": 1.5,
        **GOOD,
    }
    return {**base, **kw}


@pytest.fixture
def records() -> list[dict[str, object]]:
    return [
        _record("sub-03"),
        _record("sub-01", split="test", mask_dice=0.70),
        _record("sub-02", status="failed", error="t1-linear: registration failed (rc 1)"),
        _record("sub-04", split="val", ncc=0.31, brain_fraction_in_box=0.8),
    ]


def test_qc_table_verdicts(records: list[dict[str, object]]) -> None:
    table, _ = assemble_qc(records, QCThresholds())
    assert list(table.columns) == QC_COLUMNS
    assert table["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert table["passed"].tolist() == [False, False, True, False]
    assert table["passed"].dtype == bool
    reasons = dict(zip(table["participant_id"], table["fail_reason"], strict=True))
    assert reasons["sub-01"] == "mask_dice 0.700 < 0.8"
    assert reasons["sub-02"].startswith("preprocessing failed: t1-linear")
    assert reasons["sub-03"] == ""
    assert "ncc 0.310 < 0.5" in reasons["sub-04"]
    assert "brain_fraction_in_box 0.800 < 0.95" in reasons["sub-04"]
    assert table.loc[table["participant_id"] == "sub-03", "shape"].item() == "113x139x119"


def test_exclusions_name_stage_and_reason(records: list[dict[str, object]]) -> None:
    _, exclusions = assemble_qc(records, QCThresholds())
    assert list(exclusions.columns) == EXCLUSION_COLUMNS
    by_pid = exclusions.set_index("participant_id")
    assert by_pid.loc["sub-02", "stage"] == "preprocessing"
    assert by_pid.loc["sub-02", "reason"] == "t1-linear: registration failed (rc 1)"
    assert by_pid.loc["sub-01", "stage"] == "qc"
    assert by_pid.loc["sub-01", "reason"] == "mask_dice 0.700 < 0.8"
    assert "sub-03" not in by_pid.index


def test_thresholds_from_config_and_missing_metric() -> None:
    strict = QCThresholds(**{"min_ncc": 0.9, "min_mask_dice": 0.95})
    table, exclusions = assemble_qc([_record("sub-01")], strict)
    assert not table["passed"].item()
    assert "mask_dice 0.930 < 0.95" in exclusions["reason"].item()
    no_ncc = _record("sub-02")
    del no_ncc["ncc"]
    table, _ = assemble_qc([no_ncc])
    assert table["fail_reason"].item() == "ncc missing"


def test_all_failed_upstream_gives_empty_metrics() -> None:
    table, exclusions = assemble_qc(
        [{"participant_id": "sub-01", "session_id": "ses-M000", "status": "failed", "error": "x"}]
    )
    assert not table["passed"].item() and pd.isna(table["ncc"].item())
    assert exclusions["stage"].tolist() == ["preprocessing"]


def test_cache_index_only_passed(records: list[dict[str, object]], tmp_path: Path) -> None:
    table, _ = assemble_qc(records, QCThresholds())
    paths = {}
    for pid in ("sub-01", "sub-03", "sub-04"):
        paths[(pid, "ses-M000")] = tmp_path / f"{pid}_ses-M000.npy"
        np.save(paths[(pid, "ses-M000")], np.zeros((4, 5, 6), np.float16))
    index = cache_index(table, paths)
    assert list(index.columns) == CACHE_INDEX_COLUMNS
    assert index["participant_id"].tolist() == ["sub-03"]
    row = index.iloc[0]
    assert row["path"] == str(paths[("sub-03", "ses-M000")])
    assert row["shape"] == "4x5x6" and row["diagnosis"] == "AD" and row["label"] == 2
    with pytest.raises(KeyError, match="sub-03"):
        cache_index(table, {})


def test_plot_qc_writes_png(records: list[dict[str, object]], tmp_path: Path) -> None:
    table, _ = assemble_qc(records, QCThresholds())
    out = plot_qc(table, tmp_path / "qc" / "qc.png")
    assert out.stat().st_size > 10_000
