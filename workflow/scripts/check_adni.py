"""Snakemake script of rule `check_adni`: fail fast, naming the missing piece, before Clinica."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log = log_to(snakemake.log[0])  # noqa: F821

from earlyad.adni import check_adni_download  # noqa: E402

report = check_adni_download(Path(snakemake.input.adni), Path(snakemake.input.clinical))  # noqa: F821
log.info("%s", report)
from earlyad.tables import write_tsv  # noqa: E402

write_tsv(report.images, Path(snakemake.output.report))  # noqa: F821
