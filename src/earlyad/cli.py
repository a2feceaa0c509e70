"""The ``earlyad`` command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_synth(args: argparse.Namespace) -> None:
    from earlyad.synth.cohort import CohortSpec, write_synthetic_adni

    spec = CohortSpec(
        n_subjects=args.n_subjects,
        mean_visits=args.mean_visits,
        n_dicom=args.n_dicom,
        seed=args.seed,
        voxel_size=args.voxel_size,
    )
    cohort = write_synthetic_adni(args.out, spec, progress=not args.quiet)
    print(
        f"wrote {len(cohort)} scans of {cohort['participant_id'].nunique()} subjects to {args.out}"
    )


def _cmd_check_adni(args: argparse.Namespace) -> None:
    from earlyad.adni import run_check

    if run_check(args.adni_dir, args.clinical_dir) != 0:
        raise SystemExit(1)


def _cmd_labels(args: argparse.Namespace) -> None:
    from earlyad.stages import run_labels

    run_labels(args.bids_dir, args.out / "labels.tsv", args.out / "exclusions.tsv")


def _cmd_split(args: argparse.Namespace) -> None:
    from earlyad.splits import SplitConfig
    from earlyad.stages import run_split

    cfg = SplitConfig(
        fractions={"train": args.train, "val": args.val, "test": args.test},
        seed=args.seed,
        baseline_only_eval=args.baseline_only_eval,
    )
    run_split(args.labels, args.out, cfg)


def _cmd_check_manifests(args: argparse.Namespace) -> None:
    from earlyad.splits import SPLITS, check_disjoint
    from earlyad.tables import read_tsv

    manifests = {s: read_tsv(p) for s, p in zip(SPLITS, args.manifests, strict=True)}
    check_disjoint(manifests)
    print("manifests are subject-disjoint")


def _cmd_validate_config(args: argparse.Namespace) -> None:
    from earlyad.config import load_config

    load_config(args.config, base_dir=Path.cwd())
    print(f"{args.config}: valid")


def _cmd_gradcam(args: argparse.Namespace) -> None:
    from earlyad.gradcam.stage import GradCamSettings, run_gradcam

    settings = GradCamSettings(
        mode=args.mode,
        percentile=args.percentile,
        k=args.k,
        target=args.target,
        split=args.split,
        max_scans=args.max_scans,
        restrict_to_hippocampus=not args.no_hippocampus,
        layer=args.layer,
        dilation_mm=args.dilation_mm,
        gif_stride=args.gif_stride,
        seed=args.seed,
    )
    run_dir = args.run_dir
    scans = run_gradcam(
        run_dir / "model.pt",
        run_dir / f"predictions_{args.split}.tsv",
        args.normalized,
        args.atlas,
        args.out or Path("results/gradcam") / run_dir.name,
        settings,
        ground_truth=args.ground_truth,
        t1_linear_root=args.t1_linear,
        threads=args.threads,
    )
    print(f"explained {len(scans)} scans of {run_dir}")


def _cmd_gradcam_atlas(args: argparse.Namespace) -> None:
    from earlyad.gradcam.atlas import atlas_stage

    paths = atlas_stage(
        args.template, args.mni, args.mask, args.out, args.register, args.voxel_size, args.seed
    )
    print(f"wrote {paths.regions.parent}")


def _add_gradcam(sub: argparse._SubParsersAction) -> None:
    """``gradcam`` and ``gradcam-atlas``: defaults are the workflow's paths under results/."""
    from earlyad.gradcam.threshold import MODES

    p = sub.add_parser("gradcam", help="Grad-CAM maps, GIFs and tables of one trained run")
    p.add_argument("run_dir", type=Path, help="results/training/<run> (model.pt, predictions)")
    p.add_argument("--mode", choices=MODES, default="percentile", help="threshold mode")
    p.add_argument("--percentile", type=float, default=10.0, help="top %% kept (percentile)")
    p.add_argument("--k", type=float, default=1.0, help="mean + k sd (mean_std)")
    p.add_argument("--target", default="predicted", help="predicted | true_class | CN | MCI | AD")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--max-scans", type=int, default=0, help="seeded subset (0: all)")
    p.add_argument("--no-hippocampus", action="store_true", help="threshold in the whole crop")
    p.add_argument("--layer", default="last_conv", help="target layer (module name)")
    p.add_argument("--dilation-mm", type=float, default=4.5)
    p.add_argument("--gif-stride", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--normalized", type=Path, default=Path("results/normalized"))
    p.add_argument("--atlas", type=Path, default=Path("results/atlas"))
    p.add_argument("--ground-truth", type=Path, default=None, help="synthetic cohort.tsv")
    p.add_argument("--t1-linear", type=Path, default=Path("results/t1_linear"))
    p.add_argument("--out", type=Path, default=None, help="default results/gradcam/<run>")
    p.set_defaults(func=_cmd_gradcam)

    p = sub.add_parser("gradcam-atlas", help="AAL regions on the normalized grid")
    p.add_argument("--template", type=Path, default=Path("results/template/study_template.nii.gz"))
    p.add_argument(
        "--mni", type=Path, default=Path("results/templates/ref_cropped_template.nii.gz")
    )
    p.add_argument(
        "--mask", type=Path, default=Path("results/templates/mni_cropped_brainmask.nii.gz")
    )
    p.add_argument("--out", type=Path, default=Path("results/atlas"))
    p.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="the template IS the MNI template (preprocessing.template: mni)",
    )
    p.add_argument("--voxel-size", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_gradcam_atlas)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per stage."""
    parser = argparse.ArgumentParser(
        prog="earlyad",
        description="Early Alzheimer's disease detection from T1 MRI: pipeline stages.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic ADNI download (images + clinical CSVs)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n-subjects", type=int, default=60)
    p.add_argument("--mean-visits", type=float, default=1.5)
    p.add_argument("--n-dicom", type=int, default=3, help="scans written as DICOM series")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--voxel-size", type=float, default=1.5, help="mm")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("check-adni", help="check an ADNI download before Clinica converts it")
    p.add_argument("adni_dir", type=Path)
    p.add_argument("clinical_dir", type=Path)
    p.set_defaults(func=_cmd_check_adni)

    p = sub.add_parser("labels", help="per-scan label table from a BIDS directory")
    p.add_argument("bids_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for labels.tsv, exclusions.tsv")
    p.set_defaults(func=_cmd_labels)

    p = sub.add_parser("split", help="subject-level stratified train/val/test manifests")
    p.add_argument("labels", type=Path, help="labels.tsv")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=float, default=0.7)
    p.add_argument("--val", type=float, default=0.15)
    p.add_argument("--test", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-only-eval", action="store_true")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("check-manifests", help="refuse manifests that share a subject")
    p.add_argument("manifests", type=Path, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    p.set_defaults(func=_cmd_check_manifests)

    p = sub.add_parser("validate-config", help="validate a config file against the schema")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_cmd_validate_config)

    _add_gradcam(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"earlyad {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
