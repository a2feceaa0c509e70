"""Snakemake script of rule `templates`: install the MNI templates where Clinica looks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.preprocess.templates import install_templates  # noqa: E402

p = snakemake.params  # noqa: F821
install_templates(
    p.source,
    Path(snakemake.output.mni).parent,  # noqa: F821
    mni=Path(p.mni) if p.mni else None,
    cropped=Path(p.cropped) if p.cropped else None,
)
