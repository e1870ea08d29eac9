"""P²OT and SP²OT: deep imbalanced clustering by (semantic-regularised) progressive partial optimal transport.

Papers: C. Zhang, H. Ren, X. He, "P²OT: Progressive Partial Optimal Transport for Deep Imbalanced Clustering",
ICLR 2024 (arXiv 2401.09266), and its journal extension "SP²OT: Semantic-Regularized Progressive Partial
Optimal Transport for Imbalanced Clustering" (arXiv 2404.03446). Official code: rhfeiyang/PPOT and
rhfeiyang/SPPOT (``losses/losses.py::SK_loss``, ``utils/memory.py::LogitsMemory``); this module is an
independent implementation. The transport solvers are :mod:`longtail.clustering` (``P2OTSolver``,
``SP2OTSolver``, ``knn_similarity``, ``restrict``); the metrics are ``longtail.clustering.clustering_metrics``.
Method ``p2ot`` (``method.args.transport: p2ot`` or ``sp2ot``) with loss ``swapped-ce``; recipes ``p2ot-*`` and
``sp2ot-*``; ``longtail cluster --recipe NAME`` trains one and prints the clustering metrics.

Model (:class:`ClusteringNetwork`). A backbone ``g`` (any single-head model of the registry, its head
removed, or a timm model ``timm:<name>`` such as ``timm:vit_base_patch16_224.dino`` with local weights
``model.args.pretrained_path``; never downloaded) and a cosine head with K outputs,
``z = s · normalize(g(x)) · normalize(W)ᵀ`` (``logit_scale`` s = 10). Only the head and the last block of the
backbone train (``trainable='last_block'``: ``blocks[-1]`` of a ViT, the last residual block of the last
stage of a ResNet, as the paper fine-tunes DINO's block 11); ``'head'`` and ``'all'`` also work.

Training objective, per step with a batch of B images, two augmented views ``v ∈ {1, 2}`` and their logits
``z_v`` (B, K):

1. Memory bank: a FIFO of the detached view-1 logits and dataset indices of the last ``bank_batches`` batches
   (``ClusteringNetwork.memory``, buffers of the model so checkpoints carry it, as MoCo keeps its queue).
2. Pseudo-labels: for each view, solve the transport on the rows ``[bank; z_v]`` (cost ``C = -log softmax``)
   and keep the plan rows of the batch, ``Q_v = (N · Q)[-B:]`` (N rows in the problem). P²OT::

       min_Q <Q, C> + lam · KL(Qᵀ1 || (rho/K) 1) - epsilon · H(Q)   s.t.  Q 1 <= 1/N,  1ᵀ Q 1 = rho

   so row i of ``Q_v`` sums to the mass ``m_i ∈ [0, 1]`` transported from sample i (defaults epsilon = 0.1,
   lam = 1). SP²OT adds ``- lam1 <S, Q Qᵀ>``, ``lam1 = (1 - rho) · structure_weight · N / reference_rows``,
   with ``S`` the k-NN Gaussian graph (k = 20, sigma = 2) of the initial backbone features of the whole
   training set (built at the first step, kept in the model's ``graph`` buffers), restricted to the rows'
   dataset indices, and solves it by majorisation-minimisation. The solver warm-starts from its previous
   call (that state is not checkpointed: a resumed run restarts it, which changes plans only within the
   solver's tolerance).
3. Swapped prediction with soft, unnormalised targets (:func:`swapped_prediction_loss`)::

       L = Σ_{a ≠ b} (1/B) Σ_i  -Σ_k Q_b[i, k] · log softmax(z_a)[i, k]

   Since ``Σ_k Q_b[i, k] = m_i``, each sample weighs by its transported mass: the samples the transport
   leaves out (mass in the virtual cluster) get no weight. This is the confident-sample selection.
4. ``rho`` ramps from ``rho_start`` (0.1) to ``rho_end`` (1) with progress ``t/T``: ``exp(-5 (1 - t/T)²)``
   (``rho_ramp='sigmoid'``) or linearly, ``t`` counting steps (``ramp_unit='step'``, t/T from 0 at the first
   step) or epochs (``'epoch'``, t/T = epoch / (epochs - 1)).

Labels are never used: the loss sees the plans only, the sampler must be ``instance`` and no labelled
validation split may exist (``data.val_per_class=0``). The epoch is selected without labels, by the official
"lowest training loss": the epoch with the lowest mean loss divided by rho (``parts['normalized']``, logged
as ``loss_normalized``) is kept as ``best.pt`` (``selection_score`` = -loss_normalized), and the trainer's
report and ``longtail cluster`` evaluate it beside the last weights. Prediction: cluster id = argmax of the
head's logits; ``extra_metrics`` adds the clustering metrics (``cluster_acc``, ``cluster_nmi``, ... of
``longtail.clustering.metrics.CLUSTER_METRICS``) to every head of the trainer's report, computed from its
confusion matrix.

Differences from the official code: the bank starts empty and fills during the first ``bank_batches``
steps (the official code fills it with a forward pass before training); it keeps view-1 logits (the official
ring buffer ends each step holding view 2's); under DDP the views are gathered so the plan is that of the
global batch. One clustering head (the paper's CIFAR-100 runs train two and keep the lower-loss one). iNat
subsets: :func:`inat_subset_classes` reproduces the official recursive stride selection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.clustering import (
    P2OTSolver,
    SP2OTSolver,
    knn_similarity,
    restrict,
)
from longtail.clustering import rho_ramp as ramp_value
from longtail.clustering.baselines import RAMPS
from longtail.clustering.metrics import confusion_cluster_metrics
from longtail.config import RunConfig
from longtail.data.samplers import LABEL_FREE_SAMPLERS, sampler_name
from longtail.errors import LongtailError, unknown_name_error
from longtail.losses.base import Loss
from longtail.losses.registry import register_loss
from longtail.methods.base import Method, Stage, both_views, register_method
from longtail.methods.context import StepInfo
from longtail.models.backbones import build_backbone
from longtail.models.base import unwrap
from longtail.models.label_free import ClusteringNetwork
from longtail.models.output import ModelOutput

TRANSPORTS = ("p2ot", "sp2ot")
TRAINABLE = ("last_block", "head", "all")
RAMP_UNITS = ("step", "epoch")
LOSS_NAME = "swapped-ce"
NORMALIZED_PART = "normalized"  # the loss part of the label-free selection score, logged as loss_normalized
VIEWS = 2


# ---------------------------------------------------------------------------------------------- the loss


def swapped_prediction_loss(logits: Tensor, plans: Tensor) -> Tensor:
    """``Σ_{a≠b} mean_i -Σ_k plans[b, i, k] log softmax(logits[a])[i, k]`` for (V, B, K) logits and plans.

    The plans are not renormalised, so a row weighs by its transported mass.
    """
    if logits.shape != plans.shape or logits.dim() != 3:
        raise LongtailError(f"logits and plans must both be (views, B, K); got {tuple(logits.shape)} and "
                            f"{tuple(plans.shape)}.")
    log_probs = F.log_softmax(logits, dim=-1)
    other_views = plans.sum(dim=0, keepdim=True) - plans
    return -(other_views * log_probs).sum(dim=-1).mean(dim=-1).sum()


@register_loss(LOSS_NAME)
class SwappedPredictionLoss(Loss):
    """Swapped-prediction soft cross-entropy over the views stacked in ``output.logits`` (V·B, K), view-major,
    with ``targets`` the (V·B, K) transport plans of the same rows (see :func:`swapped_prediction_loss`).

    ``class_counts`` is accepted for the loss registry's interface and never used (clustering has no labels).
    ``rho``, the step's transported mass (passed by the method), normalises the logged selection score
    ``parts['normalized']``.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, views: int = VIEWS) -> None:
        super().__init__()
        if views < 2:
            raise LongtailError(f"Swapped prediction needs at least 2 views; got views={views}.")
        self.views = views

    def forward(self, output: ModelOutput, targets: Tensor, rho: float = 1.0) -> Tensor:
        logits = output.logits.float()
        if targets.shape != logits.shape or logits.shape[0] % self.views:
            raise LongtailError(
                f"'{LOSS_NAME}' needs (views·B, K) logits and transport plans of the same shape with "
                f"views={self.views}; got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}."
            )
        shape = (self.views, logits.shape[0] // self.views, logits.shape[1])
        loss = swapped_prediction_loss(logits.view(shape), targets.float().view(shape))
        self.parts = {
            NORMALIZED_PART: loss.detach() / rho,
            "mass": targets.detach().sum(dim=1).mean().float(),
            "rho": torch.tensor(rho),
        }
        return loss


# ---------------------------------------------------------------------------------------------- the method


def _gather_rows(rows: Tensor) -> tuple[Tensor, int]:
    """Every process's rows concatenated in rank order, and where this process's rows start."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, 0
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts), dist.get_rank() * rows.shape[0]


@register_method("p2ot")
class P2OT(Method):
    """P²OT / SP²OT self-labelling (see the module docstring); the best epoch has the lowest normalised loss.

    ``method.args``: ``transport`` ('p2ot' or 'sp2ot'); ``num_clusters`` (default: the class count);
    ``trainable`` ('last_block', 'head', 'all'); ``logit_scale`` of the cosine head; ``input_size`` (images
    are resized, bicubic, before the backbone); ``bank_batches``; the ramp ``rho_start``, ``rho_end``,
    ``rho_ramp`` ('sigmoid', 'linear'), ``ramp_unit`` ('step', 'epoch'); the transport's ``epsilon``, ``lam``,
    ``tol``, ``max_iter`` (``semi_relaxed=False`` with ``rho_start = rho_end = 1`` is balanced Sinkhorn
    self-labelling, SeLa). SP²OT only: ``knn`` (20) and ``sigma`` (2) of the graph, ``structure_weight``
    (1000) and ``reference_rows`` (5,120; the weight scales with rows / reference_rows, see
    ``longtail.clustering.sppot``), ``mm_max_iter`` (100), ``mm_tol`` (1e-6) and ``inner_tol`` (1e-10).
    """

    selection_name = "-loss_normalized"

    def __init__(
        self,
        config: RunConfig,
        info: Any,
        transport: str = "p2ot",
        num_clusters: int | None = None,
        trainable: str = "last_block",
        logit_scale: float = 10.0,
        input_size: int | None = None,
        bank_batches: int = 10,
        rho_start: float = 0.1,
        rho_end: float = 1.0,
        rho_ramp: str = "sigmoid",
        ramp_unit: str = "step",
        epsilon: float = 0.1,
        lam: float = 1.0,
        tol: float = 1e-6,
        max_iter: int = 1000,
        semi_relaxed: bool = True,
        knn: int = 20,
        sigma: float = 2.0,
        structure_weight: float = 1000.0,
        reference_rows: int | None = 5120,
        mm_max_iter: int = 100,
        mm_tol: float = 1e-6,
        inner_tol: float = 1e-10,
    ) -> None:
        super().__init__(config, info)
        self.transport = transport
        self.num_clusters = info.num_classes if num_clusters is None else num_clusters
        self.trainable = trainable
        self.logit_scale = logit_scale
        self.input_size = input_size
        self.bank_batches = bank_batches
        self.rho_start, self.rho_end, self.ramp_kind, self.ramp_unit = rho_start, rho_end, rho_ramp, ramp_unit
        self.knn, self.sigma = knn, sigma
        self._check_settings(info, semi_relaxed)
        if transport == "p2ot":
            self.solver: P2OTSolver | SP2OTSolver = P2OTSolver(
                rho_start, epsilon=epsilon, lam=lam, tol=tol, max_iter=max_iter, semi_relaxed=semi_relaxed)
        else:
            self.solver = SP2OTSolver(
                rho_start, epsilon=epsilon, lam=lam, structure_weight=structure_weight,
                reference_rows=reference_rows, max_iter=mm_max_iter, tol=mm_tol, inner_tol=inner_tol,
                inner_max_iter=max_iter)
        self._graph: scipy.sparse.csr_matrix | None = None

    # ------------------------------------------------------------------ checks

    def _check_settings(self, info: Any, semi_relaxed: bool) -> None:
        if self.transport not in TRANSPORTS:
            raise unknown_name_error("transport", self.transport, TRANSPORTS)
        if self.trainable not in TRAINABLE:
            raise unknown_name_error("trainable selector", self.trainable, TRAINABLE)
        if self.ramp_unit not in RAMP_UNITS:
            raise unknown_name_error("ramp unit", self.ramp_unit, RAMP_UNITS)
        if self.ramp_kind not in RAMPS:
            raise unknown_name_error("rho ramp", self.ramp_kind, RAMPS)
        config = self.config
        rules = [
            (self.num_clusters == info.num_classes,
             f"method.args.num_clusters={self.num_clusters} but the data has {info.num_classes} classes; the "
             "trainer's report needs one cluster per class (for an iNat subset, pass data.args.list_root=<the "
             "folder written by `longtail cluster --inat-subset N`>)"),
            (config.data.two_views, "it trains on two views of every image: set data.two_views=true"),
            (sampler_name(config.data.sampler) in LABEL_FREE_SAMPLERS,
             (f"data.sampler={config.data.sampler!r} draws by label; clustering must use a label-free sampler "
              f"({' or '.join(LABEL_FREE_SAMPLERS)})")),
            (config.data.val_per_class == 0,
             "a labelled validation split would put labels into clustering: set data.val_per_class=0 "
             "(the best epoch is selected without labels, by the logged loss_normalized)"),
            (config.loss.name == LOSS_NAME, f"set loss.name={LOSS_NAME} (got '{config.loss.name}')"),
            (config.optim.sam_rho == 0, "SAM would solve the transport twice per step: set optim.sam_rho=0"),
            (self.bank_batches >= 0, f"method.args.bank_batches must be >= 0, got {self.bank_batches}"),
            (0 < self.rho_start <= 1 and 0 < self.rho_end <= 1,
             f"rho_start and rho_end must lie in (0, 1]; got {self.rho_start}, {self.rho_end}"),
            (semi_relaxed or self.transport == "p2ot", "semi_relaxed=false is an option of transport=p2ot only"),
            (self.trainable == "all" or config.model.args.get("pretrained_path") is not None,
             f"trainable='{self.trainable}' freezes a randomly initialised backbone: set "
             "model.args.pretrained_path=<local weights> or method.args.trainable=all"),
        ]
        for holds, problem in rules:
            if not holds:
                raise LongtailError(f"Method '{config.method.name}': {problem}.")

    # ------------------------------------------------------------------ model and stages

    def build_model(self) -> ClusteringNetwork:
        backbone, num_features = build_backbone(self.config.model)
        graph = {"graph_rows": self.info.num_train, "graph_k": self.knn} if self.transport == "sp2ot" else {}
        return ClusteringNetwork(backbone, num_features, self.num_clusters, self.logit_scale,
                                 bank_rows=self.bank_batches * self.config.data.batch_size,
                                 input_size=self.input_size, **graph)

    def stages(self) -> list[Stage]:
        main, *extra = super().stages()
        return [dataclasses.replace(main, trainable=self.trainable), *extra]

    def trainable_parameters(self, stage: Stage, model: nn.Module) -> list[nn.Parameter]:
        if stage.trainable != "last_block":
            return super().trainable_parameters(stage, model)
        network = unwrap(model)
        return [*network.head.parameters(), *network.last_block().parameters()]

    # ------------------------------------------------------------------ training

    def progress(self, step: StepInfo) -> float:
        """Training progress t/T in [0, 1] of the step: over optimiser steps, or over epochs (``ramp_unit``)."""
        if self.ramp_unit == "epoch":
            return step.epoch / max(step.stage_epochs - 1, 1)
        return step.progress

    def rho(self, step: StepInfo) -> float:
        return ramp_value(self.progress(step), self.rho_start, self.rho_end, self.ramp_kind)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[Tensor, ModelOutput]:
        network = unwrap(model)
        rho = self.rho(step)
        output = model(both_views(batch, self.config.method.name))
        logits = output.logits.float()
        views = logits.detach().view(VIEWS, len(batch), -1)
        with torch.autocast(logits.device.type, enabled=False):
            plans = self.pseudo_labels(network, views, batch.indices, rho)
        loss = criterion(ModelOutput(logits=logits), plans.flatten(0, 1), rho=rho)
        network.memory.push(_gather_rows(views[0])[0], _gather_rows(batch.indices)[0])
        return loss, output

    @torch.no_grad()
    def pseudo_labels(self, network: ClusteringNetwork, views: Tensor, indices: Tensor, rho: float) -> Tensor:
        """The plan rows (V, B, K) of this process's batch, one transport per view over ``[bank; view]``."""
        bank_logits, bank_indices = network.memory.contents()
        all_indices, start = _gather_rows(indices)
        rows = torch.cat([bank_indices, all_indices])
        self.solver.rho = rho
        plans = []
        for view in views:
            all_view, _ = _gather_rows(view)
            plan = self.solve(network, torch.cat([bank_logits, all_view]), rows)
            batch_rows = plan[plan.shape[0] - all_view.shape[0]:]
            plans.append(batch_rows[start:start + view.shape[0]])
        return torch.stack(plans).to(views.dtype)

    def solve(self, network: ClusteringNetwork, logits: Tensor, indices: Tensor) -> Tensor:
        """The plan (N, K) scaled by N for the rows ``logits`` with dataset ``indices``."""
        if self.transport == "p2ot":
            return self.solver(logits)
        if not bool(network.graph.ready):
            graph = knn_similarity(self.context.training_features(network), k=self.knn, sigma=self.sigma)
            network.graph.store(graph)
        if self._graph is None:
            self._graph = network.graph.to_scipy()
        return self.solver(logits, restrict(self._graph, indices))

    # ------------------------------------------------------------------ evaluation

    def selection_score(self, record: dict[str, Any]) -> float | None:
        """Minus the epoch's mean normalised loss (``loss_normalized``); None for a stage with another loss."""
        normalized = record.get(f"loss_{NORMALIZED_PART}")
        return None if normalized is None else -normalized

    def extra_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Clustering metrics of a head (``cluster_acc``, ``cluster_nmi``, ...; see ``longtail.clustering.metrics.CLUSTER_METRICS``) from
        its confusion matrix: cluster ids are the argmax of the logits, matched to classes by the Hungarian
        algorithm for the accuracies."""
        return {f"cluster_{key}": value for key, value in confusion_cluster_metrics(
            np.asarray(metrics["confusion"]), metrics["train_counts"]).items()}
