"""File-level entry points of the preprocessing rules (called by the Snakemake scripts).

Each per-scan stage follows ``preprocessing.on_bad_scan``: with ``exclude`` a bad scan writes a
``status.json`` saying what went wrong and the run goes on (QC lists it in the exclusions);
with ``fail`` the error stops the job, naming the scan.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from earlyad.preprocess.qc import QCThresholds, assemble_qc, cache_index, plot_qc
from earlyad.preprocess.t1_linear import STATUS_NAME, run_t1_linear
from earlyad.preprocess.templates import load_templates
from earlyad.tables import write_tsv

log = logging.getLogger("earlyad")
T1W_SUFFIX = "_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"


def _status(folder: Path) -> dict[str, Any]:
    path = folder / STATUS_NAME
    if not path.exists():
        return {"ok": False, "error": f"{path} is missing"}
    return json.loads(path.read_text())


def _write_status(folder: Path, status: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATUS_NAME).write_text(json.dumps(dict(status), indent=2, default=str))


def t1_linear_stage(
    image: Path,
    participant_id: str,
    session_id: str,
    out_dir: Path,
    templates_dir: Path,
    backend: str,
    seed: int,
    threads: int,
    on_bad_scan: str,
) -> None:
    """t1-linear of one scan into ``out_dir`` (Clinica's file names plus status.json)."""
    templates = load_templates(templates_dir)
    if templates.source == "standin":
        log.warning("registering to the offline STAND-IN template (templates.source: standin)")
    image = Path(image)
    bids_dir = image.parents[3] if backend == "clinica" else None
    work = out_dir.parent / f".work_{session_id}" if backend == "clinica" else None
    result = run_t1_linear(
        image,
        participant_id,
        session_id,
        out_dir,
        templates,
        backend,
        seed,
        threads,
        work_dir=work,
        bids_dir=bids_dir,
    )
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "%s %s: ok=%s in %.1f s %s",
        participant_id,
        session_id,
        result.ok,
        result.seconds,
        result.error or "",
    )
    if on_bad_scan == "fail":
        result.raise_for_error()


def study_template_stage(
    scan_dirs: Sequence[Path],
    out_path: Path,
    initial: Path,
    mask: Path,
    iterations: int,
    max_images: int | None,
    seed: int,
    threads: int,
) -> None:
    """Build the study template from the training scans whose t1-linear succeeded."""
    images = []
    for folder in map(Path, scan_dirs):
        if _status(folder).get("ok"):
            images += sorted(folder.glob(f"*{T1W_SUFFIX}"))
        else:
            log.info("template: leaving out %s (t1-linear failed)", folder)
    if len(images) < 2:
        raise ValueError(
            f"only {len(images)} training scan(s) passed t1-linear: a study template needs at "
            "least 2 (see results/qc/exclusions.tsv, or use preprocessing.template: mni)"
        )
    from earlyad.preprocess.study_template import build_study_template

    build_study_template(
        images,
        out_path,
        initial=initial,
        iterations=iterations,
        max_images=max_images,
        seed=seed,
        threads=threads,
        mask=mask,
    )


def normalize_stage(
    t1_dir: Path,
    template: Path,
    mask: Path,
    out_dir: Path,
    participant_id: str,
    session_id: str,
    register: bool,
    voxel_size: float,
    intensity: str,
    percentiles: Sequence[float],
    seed: int,
    on_bad_scan: str,
) -> None:
    """Normalize one scan, or record why it cannot be (upstream failure or a bad scan).

    ITK's registration result depends on its thread count, so it is pinned to one thread
    before ANTs loads: the same scan normalizes to the same bits on a laptop and on a node.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    from earlyad.preprocess.normalize import normalize_scan

    upstream = _status(t1_dir)
    if not upstream.get("ok"):
        _write_status(out_dir, {"ok": False, "error": f"t1-linear: {upstream.get('error')}"})
        return
    try:
        (image,) = sorted(Path(t1_dir).glob(f"*{T1W_SUFFIX}"))
        result = normalize_scan(
            image,
            template,
            mask,
            out_dir,
            participant_id,
            session_id,
            register=register,
            voxel_size=voxel_size,
            intensity=intensity,  # type: ignore[arg-type]
            percentiles=(float(percentiles[0]), float(percentiles[1])),
            seed=seed,
        )
    except Exception as err:
        if on_bad_scan == "fail":
            raise
        log.error("%s %s: %s\n%s", participant_id, session_id, err, traceback.format_exc())
        _write_status(out_dir, {"ok": False, "error": f"normalization: {err}"})
        return
    qc = dict(result.qc)
    qc["nan_voxels"] = int(qc.get("nan_voxels", 0)) + int(upstream.get("nan_voxels") or 0)
    _write_status(out_dir, {"ok": True, "error": None, "tensor": str(result.tensor), **qc})


def qc_stage(
    manifests: Mapping[str, Path],
    scan_root: Path,
    thresholds: Mapping[str, float],
    out_qc: Path,
    out_plot: Path,
    out_exclusions: Path,
    out_index: Path,
    out_montages: Path,
) -> None:
    """QC table, exclusions, the tensor-cache index (passed scans only) and the montages."""
    records, tensors = [], {}
    out_montages.mkdir(parents=True, exist_ok=True)
    for split, path in manifests.items():
        for row in pd.read_csv(path, sep="\t", dtype=str).to_dict("records"):
            folder = scan_root / row["participant_id"] / row["session_id"]
            status = _status(folder)
            record = {
                **row,
                "split": split,
                **status,
                "status": "ok" if status.get("ok") else "failed",
            }
            records.append(record)
            if status.get("ok"):
                tensors[(row["participant_id"], row["session_id"])] = status["tensor"]
                for png in folder.glob("*_montage.png"):
                    shutil.copy(png, out_montages / png.name)
    qc_table, exclusions = assemble_qc(records, QCThresholds(**thresholds))
    write_tsv(qc_table, out_qc)
    write_tsv(exclusions, out_exclusions)
    write_tsv(cache_index(qc_table, tensors), out_index)
    plot_qc(qc_table, out_plot, QCThresholds(**thresholds))
    log.info("QC: %d of %d scans passed", int(qc_table["passed"].sum()), len(qc_table))
