"""Preprocessing: t1-linear outputs -> study template -> normalized tensors with QC."""
