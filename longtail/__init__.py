"""longtail: long-tailed visual recognition in PyTorch.

Folders mirror the architecture: ``data`` (long-tailed datasets, in-memory batched pipeline, samplers),
``models`` (registry, backbones, heads, multi-expert models), ``losses`` (baseline long-tailed losses),
``methods`` (one module per paper: RIDE, MDCS, SHIKE, DeiT-LT, APA, MetaFormer), ``engine`` (the one
trainer), ``evaluation`` (metrics and reports), ``clustering`` (P2OT / SP2OT) and ``cli``; ``config`` holds the
run settings. Imports flow one way (``tests/test_import_layers.py`` checks it): config -> data, models ->
losses -> evaluation, clustering -> methods -> engine -> api, export -> cli.

The Python API (``longtail.api``) is exported here: ``load_config``, ``train``, ``load_run``, ``run_datasets``,
``create_datasets``, ``evaluate_run``, ``predict`` and ``Prediction``. It is imported on first use, so ``import longtail`` stays
cheap (it loads no torch).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "Prediction",
    "create_datasets",
    "evaluate_run",
    "load_config",
    "load_run",
    "predict",
    "run_datasets",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from longtail import api  # here, not above: importing the API loads torch and every method

        return getattr(api, name)
    raise AttributeError(f"module 'longtail' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
