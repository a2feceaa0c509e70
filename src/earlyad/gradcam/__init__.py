"""Grad-CAM explanations of the trained CNN in the preprocessed (MNI-aligned) space."""
