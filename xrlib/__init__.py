"""xrlib: the small library behind the DiffusionXRay compendium.

One module per concept (see README): data, ct, nodules, drr, diffusion, munit, lq,
metrics, observers, stats, readerstudy, figures, cli. Every notebook computes through it.
"""

__version__ = "0.1.0"
