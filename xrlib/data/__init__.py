"""Inputs of the compendium: the dataset registry, fetching, X-ray I/O and manifests."""
