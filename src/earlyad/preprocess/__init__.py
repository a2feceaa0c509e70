"""Preprocessing: t1-linear outputs -> study template -> normalized tensors with QC.

Why a package of its own: these steps run in the Clinica environment on compute nodes (no
internet, one scan per Slurm job), so the MNI templates are installed once, up front
(``templates``), and every per-scan step (``t1_linear``) is a plain function that Snakemake
scripts and the benchmark call alike.
"""

#: Ending of the file name of the affine that normalize saves per scan (``{pid}_{ses}`` + this):
#: ANTs' ``.mat`` mapping a normalized-grid point to the t1-linear image's point. Here, not in
#: ``normalize``, so that readers (the Grad-CAM stage) need not import ANTs.
TRANSFORM_SUFFIX = "_to-template_affine.mat"
