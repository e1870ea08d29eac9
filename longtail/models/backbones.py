"""Feature backbones of the label-free methods (P²OT, SimCLR): a single-head registry model without its head,
or a timm model (``timm:<name>``) loaded from a local file, never downloaded."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import Tensor, nn

from longtail.config import ModelConfig
from longtail.errors import LongtailError
from longtail.models.registry import create

TIMM_PREFIX = "timm:"


class TimmFeatures(nn.Module):
    """A timm model built with ``num_classes=0``: its output is the pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, images: Tensor) -> Tensor:
        return self.model(images)


def build_backbone(model: ModelConfig) -> tuple[nn.Module, int]:
    """The backbone (a module with ``forward_features``) and its feature width, from the ``model`` config."""
    name = model.name
    if name.startswith(TIMM_PREFIX):
        if model.activation is not None:
            raise LongtailError("model.activation applies to registry models only, not to timm backbones.")
        options = dict(model.args)
        if options.get("pretrained"):
            raise LongtailError("Backbone weights are never downloaded: instead of model.args.pretrained, set "
                                "model.args.pretrained_path to a local file.")
        path = options.pop("pretrained_path", None)
        if path is not None:
            path = Path(path).expanduser()
            if not path.is_file():
                raise LongtailError(f"Backbone weights not found at {path}; set model.args.pretrained_path to a "
                                    "local file (weights are never downloaded).")
            options.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        network = timm.create_model(name[len(TIMM_PREFIX):], num_classes=0, **options)
        return TimmFeatures(network), network.num_features
    network = create(name, num_classes=1, activation=model.activation, activation_options=model.activation_options,
                     **model.args)
    heads = network.head_modules()
    if len(heads) != 1 or not hasattr(heads[0], "in_features"):
        raise LongtailError(f"Model '{name}' has {len(heads)} heads; a clustering backbone needs a single-head "
                            "model (e.g. resnet32, resnet50) or a timm model 'timm:<name>'.")
    num_features = heads[0].in_features
    network.replace_heads(lambda head: nn.Identity())
    return network, num_features
