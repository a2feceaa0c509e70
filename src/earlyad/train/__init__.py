"""Training: the study's 3D CNN, the tensor-cache data path and the resumable training loop."""
