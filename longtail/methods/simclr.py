"""SimCLR: self-supervised contrastive pre-training, for label-free features of a backbone.

Paper: T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv 2002.05709). Method ``simclr`` with loss ``nt-xent``; recipes
``simclr-*``. Its use here: features of a backbone that never saw the labels, for the deep imbalanced
clustering benchmark (``longtail predict RUN --features OUT.npz``, then ``benchmarks/cluster_features.py
--features-file OUT.npz`` or ``longtail cluster --features OUT.npz``).

Model (:class:`ContrastiveNetwork`). A backbone ``f`` (any single-head model of the registry, its head removed,
or a timm model, as P²OT's: ``longtail.models.backbones.build_backbone``) gives ``h = f(x)`` (B, D); the projection
head, an MLP with one hidden layer, gives ``z = g(h) = W2 ReLU(W1 h)`` (``hidden_dim``, ``projection_dim``).
``ModelOutput.features`` is ``h`` (what the paper evaluates and what the feature export writes),
``ModelOutput.logits`` is ``z`` during training.

Loss (:func:`nt_xent`). Each step sees B images in two augmented views (``data.two_views``; both views from the
same augmentation: random resized crop + flip, colour jitter, random grayscale), stacked view-major as the 2B
rows ``z = [z_view1; z_view2]``. With ``sim(u, v) = uᵀv / (‖u‖‖v‖)``, temperature ``tau`` (``loss.args
.temperature``, default 0.5) and ``p(i)`` the other view of row i (``i ± B``)::

    l(i) = -log( exp(sim(z_i, z_p(i)) / tau) / Σ_{k ≠ i} exp(sim(z_i, z_k) / tau) )
    L    = (1 / 2B) Σ_{i=1..2B} l(i)

Labels are never used: the loss sees the projections only, the sampler must be ``instance``, and the epoch
kept as ``best.pt`` is the one with the lowest mean training loss (``selection_score`` = -loss).

Monitoring. The classification metrics of the trainer's report (top-1, many / medium / few, on the
validation and test splits) are those of a weighted k-NN classifier on the backbone features, the usual
SSL monitor (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR
2018): ``predict`` fits scikit-learn's ``KNeighborsClassifier`` (cosine distance, ``knn_k`` = 200
neighbours, each voting ``exp(sim / knn_temperature)``, ``knn_temperature`` = 0.1) on the unaugmented
training split's features and labels, refitted whenever the model or its weights changed (a new model
object, or training steps since the last fit), and returns the log of its class probabilities as logits.
The labels serve this report only, never training or selection.

Differences from the paper: plain SGD with a cosine schedule instead of LARS (CIFAR-sized batches); colour
jitter applied to every image (the paper: with probability 0.8); no Gaussian blur (the paper omits it on
CIFAR too); no BatchNorm in the projection head; under DDP each process contrasts its own batch (the paper
gathers the negatives of all devices).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch import Tensor, nn

from longtail.config import RunConfig
from longtail.data.samplers import LABEL_FREE_SAMPLERS, sampler_name
from longtail.errors import LongtailError
from longtail.losses.base import Loss
from longtail.losses.registry import register_loss
from longtail.methods.base import Method, both_views, register_method
from longtail.methods.context import StepInfo
from longtail.models.backbones import build_backbone
from longtail.models.base import unwrap
from longtail.models.label_free import ContrastiveNetwork
from longtail.models.output import ModelOutput

LOSS_NAME = "nt-xent"
VIEWS = 2
MIN_PROBABILITY = 1e-12  # k-NN probabilities are floored before the log, so classes without votes stay finite


# ---------------------------------------------------------------------------------------------- the loss


def nt_xent(projections: Tensor, temperature: float) -> Tensor:
    """The NT-Xent loss ``L`` (module docstring) of the view-major rows ``projections`` (2B, P)."""
    rows = projections.shape[0]
    if projections.dim() != 2 or rows % VIEWS or rows < 2 * VIEWS:
        raise LongtailError(f"NT-Xent needs (2B, P) projections of two views with B >= 2; got "
                            f"{tuple(projections.shape)}.")
    z = F.normalize(projections.float(), dim=1)
    similarities = z @ z.T / temperature
    similarities.fill_diagonal_(float("-inf"))
    half = rows // VIEWS
    positives = (torch.arange(rows, device=z.device) + half) % rows
    return F.cross_entropy(similarities, positives)


@register_loss(LOSS_NAME)
class NTXentLoss(Loss):
    """NT-Xent over ``output.logits``, the (2B, P) projections of two views stacked view-major; no targets.

    ``class_counts`` is accepted for the loss registry's interface and never used (SimCLR has no labels).
    """

    def __init__(self, class_counts: Any = None, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise LongtailError(f"loss.args.temperature of '{LOSS_NAME}' must be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(self, output: ModelOutput) -> Tensor:
        return nt_xent(output.logits, self.temperature)


# ---------------------------------------------------------------------------------------------- the method


def _vote_weights(distances: np.ndarray, temperature: float) -> np.ndarray:
    """k-NN vote of a neighbour at cosine distance d = 1 - sim: ``exp(sim / temperature)`` up to a constant."""
    return np.exp(-distances / temperature)


@register_method("simclr")
class SimCLR(Method):
    """SimCLR contrastive pre-training (see the module docstring); the best epoch has the lowest training loss.

    ``method.args``: ``hidden_dim`` (512) and ``projection_dim`` (128) of the projection head; the k-NN
    monitor's ``knn_k`` (200) and ``knn_temperature`` (0.1). The loss's temperature is ``loss.args.temperature``.
    """

    selection_name = "-loss"

    def __init__(
        self,
        config: RunConfig,
        info: Any,
        hidden_dim: int = 512,
        projection_dim: int = 128,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
    ) -> None:
        super().__init__(config, info)
        self.hidden_dim, self.projection_dim = hidden_dim, projection_dim
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self._check_settings()
        self._steps = 0
        self._knn: KNeighborsClassifier | None = None
        self._knn_key: tuple[int, int] | None = None

    def _check_settings(self) -> None:
        config = self.config
        rules = [
            (config.data.two_views, "it contrasts two views of every image: set data.two_views=true"),
            (sampler_name(config.data.sampler) in LABEL_FREE_SAMPLERS,
             (f"data.sampler={config.data.sampler!r} draws by label; self-supervised training must use a "
              f"label-free sampler ({' or '.join(LABEL_FREE_SAMPLERS)})")),
            (config.loss.name == LOSS_NAME, f"set loss.name={LOSS_NAME} (got '{config.loss.name}')"),
            (min(self.hidden_dim, self.projection_dim) >= 1,
             f"hidden_dim and projection_dim must be >= 1, got {self.hidden_dim} and {self.projection_dim}"),
            (self.knn_k >= 1 and self.knn_temperature > 0,
             f"knn_k must be >= 1 and knn_temperature > 0, got {self.knn_k} and {self.knn_temperature}"),
        ]
        for holds, problem in rules:
            if not holds:
                raise LongtailError(f"Method '{config.method.name}': {problem}.")

    def build_model(self) -> ContrastiveNetwork:
        backbone, num_features = build_backbone(self.config.model)
        return ContrastiveNetwork(backbone, num_features, self.hidden_dim, self.projection_dim)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[Tensor, ModelOutput]:
        output = model(both_views(batch, self.config.method.name))
        self._steps += 1
        return criterion(output), output

    def selection_score(self, record: dict[str, Any]) -> float | None:
        """Minus the epoch's mean training loss (label-free)."""
        return -record["loss"]

    # ------------------------------------------------------------------ k-NN monitor

    def predict(
        self, model: nn.Module, images: Tensor, meta: dict[str, Tensor] | None = None
    ) -> ModelOutput:
        """Backbone features and, as logits, the log-probabilities of the k-NN classifier over the training
        split's features (refitted when the model or its weights changed)."""
        features = unwrap(model).forward_features(images).float()
        classifier = self._knn_classifier(model)
        probabilities = np.zeros((len(images), self.info.num_classes))
        probabilities[:, classifier.classes_] = classifier.predict_proba(features.cpu().numpy())
        logits = torch.from_numpy(probabilities).clamp_(min=MIN_PROBABILITY).log().float().to(images.device)
        return ModelOutput(logits=logits, features=features)

    def exportable_logits(self, model: nn.Module, images: Tensor) -> Tensor:
        raise LongtailError(
            "A SimCLR run predicts with a k-NN classifier over its training features, which cannot be exported; "
            "export its features with `longtail predict RUN --features OUT.npz` instead."
        )

    def _knn_classifier(self, model: nn.Module) -> KNeighborsClassifier:
        network = unwrap(model)
        key = (id(network), self._steps)
        if self._knn is None or self._knn_key != key:
            targets = np.asarray(self.context.splits.train.targets)
            features = self.context.training_features(network).numpy()
            self._knn = KNeighborsClassifier(
                n_neighbors=min(self.knn_k, len(targets)),
                weights=functools.partial(_vote_weights, temperature=self.knn_temperature),
                metric="cosine",
                algorithm="brute",
            ).fit(features, targets)
            self._knn_key = key
        return self._knn
