"""Long-tailed datasets, the in-memory batched pipeline, samplers and loaders.

``create_datasets(name, ...)`` builds the train / validation / test splits of a dataset registered in
``DATASETS``; ``create_loader(dataset, ...)`` iterates ``Batch``es of it (augmented on the given device
for in-memory datasets, through DataLoader workers for image files).

Modules: ``datasets`` (the registry and ``create_datasets``), the dataset families ``small_images`` and
``folders_and_lists`` (registered on import), ``shaping`` (long-tailed profiles, the validation split, shot
groups), ``containers`` (the image datasets, ``Batch``, ``DatasetSplits``), ``reading`` (raw formats,
decoding, the on-disk cache), ``loaders`` (batches of a dataset; the evaluation preprocessing of an image),
``augment`` (batched augmentation), ``samplers`` (epoch orders) and ``meta`` (per-image meta-information).
"""

from longtail.data import folders_and_lists, small_images  # noqa: F401  (register the datasets)
from longtail.data.containers import Batch, DatasetInfo, DatasetSplits
from longtail.data.datasets import DATASETS, create_datasets, default_data_root
from longtail.data.loaders import Loader, create_loader
from longtail.data.shaping import shot_groups

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetInfo",
    "DatasetSplits",
    "Loader",
    "create_datasets",
    "create_loader",
    "default_data_root",
    "shot_groups",
]
