"""Long-tailed datasets, the in-memory batched pipeline, samplers and loaders.

``create_datasets(name, ...)`` builds the train / validation / test splits of a dataset registered in
``DATASETS``; ``create_loader(dataset, ...)`` iterates ``Batch``es of it (augmented on the given device
for in-memory datasets, through DataLoader workers for image files).
"""

from longtail.data import cifar, digits, folders, imagenet_r, lists  # noqa: F401  (register the datasets)
from longtail.data.batch import Batch
from longtail.data.datasets import DATASETS, DatasetInfo, DatasetSplits, create_datasets, default_data_root
from longtail.data.loader import Loader, create_loader
from longtail.data.shots import shot_groups

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
