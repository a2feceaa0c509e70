"""Snakemake script of rule `synthesize`: write the synthetic ADNI download."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.synth.cohort import CohortSpec, write_synthetic_adni  # noqa: E402

out_dir = Path(snakemake.output.adni).parent  # noqa: F821
write_synthetic_adni(out_dir, CohortSpec(**snakemake.params.spec), progress=True)  # noqa: F821
