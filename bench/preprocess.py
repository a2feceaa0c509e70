"""t1-linear: the native ANTsPy backend against ``clinica run t1-linear --use-antspy``.

Both backends process the same N synthetic scans (``earlyad.synth.brain``: Colin27 with skull,
random rigid pose, bias field, noise), one after the other, each scan in its own child process
(``run_t1_linear``), with the same ITK thread count. Reported per scan and on average:

- ``seconds`` (wall) and ``cpu_s`` (user + system of the child tree): CPU time is the fairer
  speed figure when other jobs share the machine;
- ``peak_mb``: peak RSS of the child tree (``os.wait4``);
- ``ncc_out``: normalized cross-correlation of the output with the cropped template inside the
  template's brain mask. Clinica's output is NONLINEARLY warped (its ``--use-antspy`` path runs
  ANTsPy's default SyN, see ``earlyad.preprocess.t1_linear``), so it is not a linear result;
- ``ncc_mat``: the same NCC after resampling the INPUT (no bias correction) with each backend's
  saved affine ``.mat``: the like-for-like comparison of the two linear registrations;
- ``err_mm``: mean distance, over the template's brain voxels, between each ``.mat`` mapping and
  the synthetic ground truth (``mni_to_scanner``; ignores the scan's small non-rigid jitter and
  the Colin27-to-MNI152 difference, so about 1-3 mm is the floor), and ``gap_mm`` between
  the two backends' mappings.

Ratios: speed-up = clinica / native (wall and CPU), quality = native / clinica NCC.

    python bench/preprocess.py [--n 3] [--threads 2] [--seed 0] [--out DIR]
                               [--backends native clinica] [--templates DIR]

Without ``--templates`` the offline stand-in is installed (into Clinica's own folder too,
see ``earlyad.preprocess.templates``). Caveat: the stand-in is skull-stripped while the scans
have a skull, so a registration without a rigid search can inflate the head onto the brain.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from earlyad.preprocess.t1_linear import (
    load_t1,
    run_t1_linear,
    to_ants,
)
from earlyad.preprocess.templates import (
    CROP_BOX,
    TemplatePaths,
    install_templates,
    load_templates,
)
from earlyad.synth.brain import load_reference, mni_to_scanner, synthesize_scan

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SEVERITIES = (0.0, 0.5, 1.0)


def make_cohort(bids: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """N synthetic scans in a BIDS tree (so Clinica reads them in place), with their poses."""
    ref = load_reference()
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.7.0", "DatasetType": "raw"})
    )
    scans = []
    for i in range(n):
        pid, ses = f"sub-ADNI900S{i:04d}", "ses-M000"
        scan = synthesize_scan(ref, _SEVERITIES[i % 3], np.random.default_rng(seed + 100 + i))
        path = bids / pid / ses / "anat" / f"{pid}_{ses}_T1w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(scan.image, path)
        scans.append({"pid": pid, "ses": ses, "path": path, "truth": mni_to_scanner(scan.params)})
    pids = "\n".join(s["pid"] for s in scans)
    (bids / "participants.tsv").write_text(f"participant_id\n{pids}\n")
    return scans


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalized cross-correlation of two images inside a mask."""
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def mat_to_ras(mat: Path) -> np.ndarray:
    """4x4 template (RAS mm) -> scan (RAS mm) mapping of an ITK affine .mat."""
    import ants

    tx = ants.read_transform(str(mat))
    p = np.asarray(tx.parameters, dtype=np.float64)
    centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = p[:9].reshape(3, 3)
    m[:3, 3] = p[9:12] + centre - m[:3, :3] @ centre
    return _LPS @ m @ _LPS


def resample_with_mat(scan: Path, mat: Path, templates: TemplatePaths) -> np.ndarray:
    """The input scan (no bias correction) on the cropped template grid through ``mat``."""
    import ants

    fixed = to_ants(nib.load(templates.mni))
    moving = to_ants(load_t1(scan).image)
    warped = ants.apply_transforms(fixed, moving, [str(mat)], interpolator="linear")
    return warped.numpy()[CROP_BOX]


def brain_points(templates: TemplatePaths, step: int = 20) -> np.ndarray:
    """Homogeneous RAS coordinates (4 x K) of every ``step``-th brain voxel of the template."""
    mask = nib.load(templates.cropped_mask)
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)[::step]
    return mask.affine @ np.c_[idx, np.ones(len(idx))].T


def mean_distance(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    """Mean distance in mm between two 4x4 mappings over a set of points."""
    return float(np.linalg.norm((a @ points - b @ points)[:3], axis=0).mean())


def run_one(scan: dict, backend: str, args: argparse.Namespace, t: TemplatePaths, root: Path):
    """One backend on one scan; returns its row (or an error row)."""
    out = root / backend / scan["pid"]
    res = run_t1_linear(
        scan["path"],
        scan["pid"],
        scan["ses"],
        out,
        t,
        backend,  # type: ignore[arg-type]
        seed=args.seed,
        threads=args.threads,
        work_dir=root / "work" / backend / scan["pid"],
        bids_dir=root / "bids",
    )
    status = json.loads(res.status.read_text())
    row = {"scan": scan["pid"], "backend": backend, "ok": res.ok, "error": res.error}
    row |= {k: status[k] for k in ("seconds", "cpu_seconds", "peak_rss_mb")}
    if res.ok:
        template = np.asarray(nib.load(t.cropped).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(t.cropped_mask).dataobj) > 0
        row["ncc_out"] = ncc(np.asarray(nib.load(res.image).dataobj), template, mask)
        row["ncc_mat"] = ncc(resample_with_mat(scan["path"], res.affine, t), template, mask)
        row["mapping"] = mat_to_ras(res.affine)
        row["err_mm"] = mean_distance(row["mapping"], scan["truth"], brain_points(t))
    return row


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def report(rows: list[dict], t: TemplatePaths) -> dict[str, Any]:
    """Print the per-scan table, the means and the ratios; return the summary."""
    cols = ("seconds", "cpu_seconds", "peak_rss_mb", "ncc_out", "ncc_mat", "err_mm")
    print(f"{'scan':18} {'backend':8} " + " ".join(f"{c:>11}" for c in cols))
    for r in rows:
        cells = " ".join(
            f"{r[c]:11.3f}" if isinstance(r.get(c), float) else f"{'-':>11}" for c in cols
        )
        print(f"{r['scan']:18} {r['backend']:8} {cells}" + ("" if r["ok"] else f"  {r['error']}"))
    by = {b: [r for r in rows if r["backend"] == b and r["ok"]] for b in ("native", "clinica")}
    summary = {b: {c: _mean(v, c) for c in cols} for b, v in by.items() if v}
    for b, s in summary.items():
        print(f"mean {b:8} " + " ".join(f"{c}={s[c]:.3f}" for c in cols))
    if len(summary) == 2:
        n, c = summary["native"], summary["clinica"]
        pts = brain_points(t)
        gaps = [
            mean_distance(a["mapping"], b["mapping"], pts)
            for a, b in zip(by["native"], by["clinica"], strict=False)
            if a["scan"] == b["scan"]
        ]
        summary["ratios"] = {
            "speedup_wall": c["seconds"] / n["seconds"],
            "speedup_cpu": c["cpu_seconds"] / n["cpu_seconds"],
            "memory": n["peak_rss_mb"] / c["peak_rss_mb"],
            "quality_out": n["ncc_out"] / c["ncc_out"],
            "quality_mat": n["ncc_mat"] / c["ncc_mat"],
            "gap_mm": float(np.mean(gaps)) if gaps else float("nan"),
        }
        print("native/clinica: " + " ".join(f"{k}={v:.3f}" for k, v in summary["ratios"].items()))
    print(f"templates: {t.source} ({t.mni.parent})")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=3, help="number of synthetic scans")
    p.add_argument("--threads", type=int, default=2, help="ITK threads per scan (both backends)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="keep everything here (default: tmp)")
    p.add_argument("--backends", nargs="+", default=["native", "clinica"])
    p.add_argument("--templates", type=Path, default=None, help="an installed templates folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="earlyad-bench-prep-") as tmp:
        root = args.out or Path(tmp)
        (root / "bids").mkdir(parents=True, exist_ok=True)
        t = (
            load_templates(args.templates)
            if args.templates
            else install_templates("standin", root / "templates")
        )
        scans = make_cohort(root / "bids", args.n, args.seed)
        rows = []
        for scan in scans:
            for backend in args.backends:
                rows.append(run_one(scan, backend, args, t, root))
                print(f"done {scan['pid']} {backend}: {rows[-1]['seconds']:.1f} s", flush=True)
        summary = report(rows, t)
        clean = [{k: v for k, v in r.items() if k != "mapping"} for r in rows]
        (root / "bench_preprocess.json").write_text(
            json.dumps({"rows": clean, "summary": summary}, indent=2, default=str)
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
