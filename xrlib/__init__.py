"""xrlib: the small library behind the DiffusionXRay compendium.

Start with ``stages`` (what each pipeline stage reads and writes) and ``params`` (every setting,
typed and checked); then the packages: data, drr, models, lq, eval, stats, and the modules
readerstudy, figures, paper, cli. Every notebook computes through it.
"""

__version__ = "0.1.0"
