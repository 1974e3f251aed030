"""Learned models: the diffusion UNet and its samplers, the restorer, MUNIT, training and checkpoints."""
