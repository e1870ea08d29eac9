"""longtail: long-tailed visual recognition in PyTorch.

Folders mirror the architecture: ``data`` (long-tailed datasets, in-memory batched pipeline, samplers),
``models`` (registry, backbones, heads, multi-expert models), ``losses`` (baseline long-tailed losses),
``methods`` (one module per paper: RIDE, MDCS, SHIKE, DeiT-LT, APA, MetaFormer), ``engine`` (the one
trainer), ``evaluation`` (metrics and reports), ``clustering`` (P2OT / SP2OT) and ``cli``.
"""

__version__ = "0.1.0"
