"""Preprocessing: t1-linear outputs -> study template -> normalized tensors with QC.

Why a package of its own: these steps run in the Clinica environment on compute nodes (no
internet, one scan per Slurm job), so the MNI templates are installed once, up front
(``templates``), and every per-scan step (``t1_linear``) is a plain function that Snakemake
scripts and the benchmark call alike.
"""
