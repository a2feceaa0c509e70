"""Snakemake script of rule `scaling_report`: the scaling table and its three plots."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.scaling import plot_metric, scaling_table  # noqa: E402
from earlyad.tables import write_tsv  # noqa: E402

runs = [(impl, int(t)) for impl, t in (r.split(":") for r in snakemake.params.runs)]  # noqa: F821
measured = {
    run: (Path(bench), Path(device))
    for run, bench, device in zip(
        runs,
        snakemake.input.benchmarks,  # noqa: F821
        snakemake.input.devices,  # noqa: F821
        strict=True,
    )
}
table = scaling_table(
    measured,
    epochs=snakemake.params.epochs,  # noqa: F821
    include_study=snakemake.params.include_study,  # noqa: F821
)
write_tsv(table, Path(snakemake.output.table))  # noqa: F821
plots = {"elapsed_min": "elapsed", "cpu_time_min": "cpu_time", "max_rss_mb": "max_rss"}
for metric, output in plots.items():
    plot_metric(table, metric, Path(getattr(snakemake.output, output)))  # noqa: F821
