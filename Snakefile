# earlyad: early Alzheimer's disease detection from structural T1 MRI.
# This file is the contents page of the workflow; each stage lives in workflow/rules/<stage>.smk
# and its logic in the Python package src/earlyad/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cpp.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/scaling.smk"
include: "workflow/rules/gradcam.smk"


rule all:
    default_target: True
    input:
        all_targets(),
