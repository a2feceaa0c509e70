"""The two evaluation steps of the workflow: one run's metrics and figures, then the summary
over the grid with the comparison against the published study."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from earlyad import CLASSES
from earlyad.evaluate.compare import comparison_table, leaked_share, metric_rows
from earlyad.evaluate.metrics import (
    BootstrapConfig,
    bootstrap_by_subject,
    confusion_matrix,
    metrics_document,
    metrics_long_table,
    read_predictions,
    split_arrays,
)
from earlyad.evaluate.plots import plot_comparison, plot_confusion, plot_radar, plot_roc
from earlyad.evaluate.summary import grid_with_test, selected_run, training_cost
from earlyad.tables import read_tsv, write_tsv

LOG = logging.getLogger("earlyad")


@dataclass(frozen=True)
class RunOutputs:
    """Files written by :func:`evaluate_run` for one run."""

    metrics_json: Path
    metrics_tsv: Path
    confusion: Path
    radar: Path
    roc: Path


def _write_json(document: Mapping, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def evaluate_run(
    run: str, predictions: Mapping[str, Path], out: RunOutputs, config: BootstrapConfig
) -> dict:
    """Metrics with subject-bootstrap intervals for every split given, and the test figures.

    Args:
        run: the grid run's name (recorded in the JSON and figure titles).
        predictions: split -> predictions TSV; must contain ``test``.
        out: where the metrics and figures go.
        config: bootstrap settings.

    Returns:
        The metrics document written to ``out.metrics_json``.
    """
    tables = {split: read_predictions(path) for split, path in predictions.items()}
    intervals = {split: bootstrap_by_subject(t, config) for split, t in tables.items()}
    document = metrics_document(run, tables, intervals, config)
    _write_json(document, out.metrics_json)
    write_tsv(metrics_long_table(intervals), out.metrics_tsv)

    y, probs = split_arrays(tables["test"])
    test = document["splits"]["test"]
    metrics = {k: v["estimate"] for k, v in test["metrics"].items()}
    value = {k: np.nan if v is None else v for k, v in metrics.items()}
    n = f"{test['scans']} test scans, {test['subjects']} subjects"
    plot_confusion(
        confusion_matrix(y, probs.argmax(axis=1) if len(y) else y), out.confusion, f"{run}: {n}"
    )
    rates = {c: {m: value[f"{m}_{c}"] for m in ("precision", "recall", "f1")} for c in CLASSES}
    plot_radar(rates, out.radar, f"{run}: {n}")
    aucs = {c: value[f"auc_{c}"] for c in CLASSES}
    aucs.update(micro=value["micro_auc"], macro=value["macro_auc"])
    plot_roc(y, probs, aucs, out.roc, f"{run}: ROC, one class vs rest ({n})")
    LOG.info(
        "%s: test accuracy %s, macro-AUC %s (%d resamples by subject)",
        run,
        metrics["accuracy"],
        metrics["macro_auc"],
        config.resamples,
    )
    return document


@dataclass(frozen=True)
class SummaryOutputs:
    """Files written by :func:`summarise_evaluation`."""

    grid: Path
    comparison: Path
    comparison_plot: Path
    training_cost: Path


def summarise_evaluation(
    grid_tsv: Path,
    metrics_json: Mapping[str, Path],
    logs: Mapping[str, Path],
    test_predictions: Mapping[str, Path],
    train_manifest: Path,
    out: SummaryOutputs,
) -> str:
    """Grid summary with the chosen run's test metrics, the comparison with the study and the
    training-cost table. Returns the chosen run's name.

    Args:
        grid_tsv: the training stage's grid summary (choice made on validation).
        metrics_json: run -> its metrics JSON.
        logs: run -> its per-epoch training log.
        test_predictions: run -> its test predictions (the chosen run's give the leakage check).
        train_manifest: the training split's manifest.
        out: where the tables and the plot go.
    """
    grid = read_tsv(grid_tsv)
    documents = {run: json.loads(Path(p).read_text()) for run, p in metrics_json.items()}
    missing = sorted(set(grid["run"]) - set(documents))
    if missing:
        raise ValueError(f"{grid_tsv}: run(s) {missing} have no metrics JSON")
    chosen = selected_run(grid)
    write_tsv(grid_with_test(grid, documents), out.grid)

    test = read_predictions(test_predictions[chosen])
    leak = leaked_share(test["participant_id"], read_tsv(train_manifest)["participant_id"])
    table = comparison_table(documents[chosen]["splits"]["test"]["metrics"], len(test), leak)
    write_tsv(table, out.comparison)
    plot_comparison(metric_rows(table), out.comparison_plot)
    write_tsv(training_cost({r: read_tsv(p) for r, p in logs.items()}, grid), out.training_cost)
    LOG.info("chosen run on validation: %s; test scans from training subjects: %s", chosen, leak)
    return chosen
