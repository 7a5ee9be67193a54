"""Few-shot adaptation of CLIP-style models: feature caches, FMA and linear probes."""

__version__ = "0.1.0"
