"""Evaluation: image quality, realism, FID, nodule preservation, model observers (virtual readers)."""
