"""File-level entry points of each stage: read inputs, call the library, write outputs.

Both the CLI and the Snakemake scripts call these, so a stage behaves the same from either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from earlyad.labels import DEFAULT_DIAGNOSIS_MAP, build_label_table
from earlyad.splits import (
    SPLITS,
    SplitConfig,
    make_splits,
    plot_cohort,
    split_from_manifests,
)
from earlyad.tables import read_tsv, write_tsv

log = logging.getLogger("earlyad")


def run_labels(
    bids_dir: Path,
    labels_out: Path,
    exclusions_out: Path,
    diagnosis_map: Mapping[str, str] = DEFAULT_DIAGNOSIS_MAP,
) -> None:
    """Write the label table and its exclusions from a BIDS directory."""
    result = build_label_table(Path(bids_dir), diagnosis_map)
    write_tsv(result.labels, labels_out)
    write_tsv(result.exclusions, exclusions_out)
    counts = result.labels["diagnosis"].value_counts().to_dict()
    log.info(
        "labelled %d scans of %d subjects %s; %d scans excluded (see %s)",
        len(result.labels),
        result.labels["participant_id"].nunique(),
        counts,
        len(result.exclusions),
        exclusions_out,
    )


def run_split(
    labels_path: Path,
    out_dir: Path,
    config: SplitConfig,
    manifests: Mapping[str, str | None] | None = None,
) -> None:
    """Write ``{train,val,test}.tsv``, ``balance.tsv``, ``summary.tsv``, ``exclusions.tsv`` and
    ``cohort.png`` into ``out_dir``, from our split or from the user's manifests."""
    labels = read_tsv(labels_path)
    out_dir = Path(out_dir)
    given = {k: v for k, v in (manifests or {}).items() if v}
    if given:
        log.info("using user-supplied manifests %s", given)
        result = split_from_manifests(given, labels, config.balance_alpha)
    else:
        result = make_splits(labels, config)
    for split in SPLITS:
        write_tsv(result.manifests[split], out_dir / f"{split}.tsv")
    write_tsv(result.balance, out_dir / "balance.tsv")
    write_tsv(result.summary, out_dir / "summary.tsv")
    write_tsv(result.exclusions, out_dir / "exclusions.tsv")
    plot_cohort(result.manifests, out_dir / "cohort.png")
    for row in result.summary.to_dict("records"):
        log.info("%s", row)
    if not result.balance["balanced"].all():
        log.warning(
            "splits differ in %s at alpha=%s even after %d redraws; see balance.tsv",
            ", ".join(result.balance.loc[~result.balance["balanced"], "variable"]),
            config.balance_alpha,
            result.attempt + 1,
        )
