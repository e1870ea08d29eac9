"""Models by name: ``longtail.models.create(name, num_classes=..., **kw)``.

Importing a model module registers its models; each module that defines models is listed here.
"""

from longtail.models import (  # noqa: F401  (registers models)
    cifar_resnet,
    deit,
    metaformer,
    ride_resnet,
    shike,
    torchvision_resnet,
)
from longtail.models import se_resnet  # noqa: F401  (registers se_resnet32, se_resnet50, se_resnext50_32x4d)
from longtail.models.output import ModelOutput
from longtail.models.registry import MODELS, create, list_models, register_model

__all__ = ["MODELS", "ModelOutput", "create", "list_models", "register_model"]
