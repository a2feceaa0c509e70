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


def _cmd_plan_epochs(args: argparse.Namespace) -> None:
    from earlyad.train.cpp_twin import write_plan
    from earlyad.train.trainer import TrainConfig

    config = TrainConfig(
        seed=args.seed,
        epochs=args.epochs,
        crop=args.crop,
        blur_p=args.blur_p,
        blur_sigma_max=args.blur_sigma_max,
    )
    plan = write_plan(args.index, args.out, config)
    print(f"wrote {len(plan)} planned samples ({args.epochs} epochs) to {args.out}")


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

    p = sub.add_parser(
        "plan-epochs",
        help="the seeded crops, blur sigmas and epoch orders of a run, for the C++ twin",
    )
    p.add_argument("--index", type=Path, required=True, help="tensor-cache index.tsv")
    p.add_argument("--out", type=Path, required=True, help="plan TSV to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--blur-p", type=float, default=0.5)
    p.add_argument("--blur-sigma-max", type=float, default=1.5)
    p.set_defaults(func=_cmd_plan_epochs)
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
