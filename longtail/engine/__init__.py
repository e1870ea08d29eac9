"""The one trainer of the library: config and recipes (``config``), optimisers and schedules (``optim``),
DDP plumbing (``distributed``), checkpoints (``checkpoint``), evaluation reports (``evaluate``) and the
training loop (``trainer``). Methods plug in through ``longtail.methods.base.Method``."""
