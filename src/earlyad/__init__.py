"""earlyad: early Alzheimer's disease detection from structural T1 MRI.

The package holds the pipeline's logic; Snakemake rules and scripts stay thin wrappers around it.
"""

__version__ = "0.1.0"

#: The three classes, in label order (index = integer label used by the models).
CLASSES: tuple[str, str, str] = ("CN", "MCI", "AD")
