"""RIDE: Routing Diverse Distribution-Aware Experts (losses, the ``ride`` method, the expert router).

Paper: Xudong Wang, Long Lian, Zhongqi Miao, Ziwei Liu, Stella X. Yu, "Long-tailed Recognition by Routing
Diverse Distribution-Aware Experts", ICLR 2021 (arXiv 2010.01809). Official code:
frank-xwang/RIDE-LongTailRecognition (``model/loss.py``: ``RIDELoss``, ``RIDELossWithDistill``;
``model/ldam_drw_resnets/ea_resnet_cifar.py``, ``model/fb_resnets/EAResNeXt.py``: the expert-assignment router).

Symbols (as in the code below): ``z_k`` = ``expert_logits[k]`` (B, C), already multiplied by the cosine scale
``s``; ``z̄ = mean_k z_k``; ``y`` = targets; ``n_c`` = ``class_counts``; ``m_c`` = LDAM margins
(``m_c ∝ n_c^(-1/4)``, the rarest class gets ``max_m``); ``w`` = class-balanced effective-number weights
(beta 0.9999, summing to C), only from the DRW epoch on; ``λ`` = ``diversity_factor``; ``α`` =
``reweight_factor``.

RIDE loss (``ride``)::

    d_c  = C·π_c·α + 1 − α,  d ← d / max(d)                π_c = n_c / Σ n
    T_c  = T_base · d_c  after DRW,  T_base before;       T̄ = mean_c T_c
    P    = softmax(z̄ / T)                                 (a constant: no gradient flows through P)
    L    = Σ_k [ base_loss_factor · CE_w(z_k − s·m_y·1_y, y) + λ · T̄² · KL(P ‖ softmax(z_k / T)) ]

The KL is averaged over the batch (``batchmean``) and the loss is summed, not averaged, over experts. λ is
negative on CIFAR (−0.45): each expert is pushed away from the ensemble. DRW is active for 0-based epochs
``epoch >= drw_epoch``, which is the official 1-based ``epoch > reweight_epoch``.

Distillation (loss ``ride_distill``, i.e. ``ride`` with ``distill_factor=1``) adds, with the teacher's logits
``z_T`` read from ``output.aux['teacher_logits']`` (the ``ride`` method fills it from ``method.args.teacher``,
any longtail checkpoint, run under ``no_grad``, in eval mode unless ``teacher_mode='train'``)::

    L_distill = L + distill_factor · T_d² · KL(softmax(z_T / T_d) ‖ softmax(z̄ / T_d)),   T_d = 1.5

Expert assignment (stage 2, ``trainable: router``, loss ``ride_router``). The trained network is frozen (its
BatchNorm statistics too); router i (i = 0 … K−2, 0-based) runs after expert i and decides whether expert
i+1 is evaluated. With ``S_i = Σ_{j≤i} z_j`` and ``f_i`` expert i's pooled feature (``expert_features[i]``)::

    u_i = ReLU(W_i · f_i / ‖f_i‖ + b_i)                       W_i: D → 16   (``router.hidden[i]``)
    a_i = v · [topk(S_i / (i+1), k) ; u_i] + c                 k sorted largest values; v shared by all i
    t_i = [argmax S_i ≠ y] ∧ [∃ j > i: argmax S_j = y]         "a later expert would fix the prediction"
    L_router = mean_{i,b} BCEWithLogits(a_i, t_i; pos_weight)  pos_weight = 100

k = ``router_top_k`` (30 on CIFAR-100, 50 on ImageNet-size data; at most C). At inference every image
starts with expert 0 and takes expert i+1 only while σ(a_i) > ``router_threshold`` (0.5); its prediction
is the mean of the n ≤ K experts it used, and its cost is trunk + Σ_{j<n} expert_j + Σ_{j<min(n,K−1)} router_j
multiply-accumulates, each part counted once from the actual layers with
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2; BatchNorm, activations and pooling are
not counted). Once a router exists, ``predict`` returns the routed prediction as ``logits`` (the report's
main head), the full ensemble as ``aux['all_experts_logits']`` (head ``all_experts``) and, per image,
``aux['experts_per_image']`` and ``aux['gmacs_per_image']``.

Where the official code differs from the paper, and what this module does:

* With ``diversity_factor == 0`` the official loss silently feeds ``z̄`` instead of ``z_k`` to each expert's
  LDAM term (a different, "collaborative" loss; RIDE issue #7). This module always uses ``z_k``; the official
  behaviour is the option ``official_zero_diversity=True``.
* The ``T̄²`` factor is not in the paper (RIDE issue #5: folded into λ); it is part of the formula above.
* ``RIDELossWithDistill`` loops over the experts and adds the whole RIDE loss and the distillation term once
  per expert, so its loss is K times the formula above. Option ``official_distill_repeat=True`` reproduces
  that scaling (it matters with SGD weight decay and gradient clipping).
* Its distillation teacher is never put in eval mode (``trainer/trainer.py`` lines 24-38 build and load it,
  line 71 sets only the student's mode, line 98 runs the teacher under ``no_grad``): an ``nn.Module`` starts in
  training mode, so the teacher's BatchNorm normalises with the statistics of each training batch (and keeps
  updating its running averages, which nothing reads). This module runs the teacher in eval mode, with the
  statistics it was evaluated with, so its predictions are the ones its reported accuracy measures;
  ``method.args.teacher_mode=train`` gives the official behaviour.
* The router's final layer ``v`` is shared by all routers in the official code (``share_expert_help_pred_fc``
  defaults to true) and so here; ``router_shared_decision=False`` gives each router its own.

Model output: ``expert_logits`` (K, B, C) is required; ``output.logits`` is not read (``z̄`` is the mean of the
expert logits, built in the graph).
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from longtail.config import RunConfig
from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss, loss_dtype, require_class_targets
from longtail.losses.experts import expert_cross_entropy, require_expert_logits
from longtail.losses.ldam import ldam_margin_logits
from longtail.losses.registry import register_loss
from longtail.losses.weights import ldam_margins
from longtail.methods.base import Method, Stage, register_method
from longtail.methods.context import RunContext, StepInfo
from longtail.methods.runs import load_teacher
from longtail.models.base import unwrap
from longtail.models.multi_expert import ExpertRouter, MultiExpertNetwork
from longtail.models.output import ModelOutput


@dataclass(frozen=True)
class RideTerms:
    """The RIDE loss and its per-expert parts: ``expert_ce`` (weighted LDAM CE, before ``base_loss_factor``)
    and ``expert_kl`` (KL to the ensemble, before ``λ·T̄²``), both of shape (K,)."""

    loss: Tensor
    expert_ce: Tensor
    expert_kl: Tensor


def diversity_weights(class_counts: Sequence[int] | Tensor, reweight_factor: float) -> Tensor:
    """``d_c = C·π_c·α + 1 − α`` scaled so that ``max d = 1`` (float64)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    prior = counts / counts.sum()
    weights = len(counts) * prior * reweight_factor + 1.0 - reweight_factor
    weights = weights / weights.max()
    if not bool((weights > 0).all()):
        raise LongtailError(
            f"RIDE reweight_factor={reweight_factor} makes some diversity temperatures non-positive; "
            "use a smaller reweight_factor (0.05 on CIFAR, 0.02 on ImageNet-LT)."
        )
    return weights


def ride_loss_terms(
    expert_logits: Tensor,
    targets: Tensor,
    margins: Tensor,
    scale: float,
    temperature: Tensor,
    diversity_factor: float,
    class_weights: Tensor | None = None,
    base_loss_factor: float = 1.0,
    ce_on_mean_logits: bool = False,
) -> RideTerms:
    """The RIDE loss of ``expert_logits`` (K, B, C) with per-class ``temperature`` (C,) (see module doc).

    ``ce_on_mean_logits`` feeds ``z̄`` to every expert's LDAM term (the official code's λ = 0 behaviour).
    """
    mean_logits = expert_logits.mean(0)
    num_experts, batch, num_classes = expert_logits.shape
    ce_logits = mean_logits.expand_as(expert_logits) if ce_on_mean_logits else expert_logits
    ldam_logits = ldam_margin_logits(ce_logits.reshape(-1, num_classes), targets.repeat(num_experts), margins, scale)
    expert_ce = expert_cross_entropy(ldam_logits.view_as(expert_logits), targets, class_weights)

    with torch.no_grad():
        ensemble = F.softmax(mean_logits / temperature, dim=-1)
    expert_log_probs = F.log_softmax(expert_logits / temperature, dim=-1)
    expert_kl = F.kl_div(expert_log_probs, ensemble.expand_as(expert_log_probs), reduction="none").sum((1, 2)) / batch

    mean_temperature = temperature.mean()
    diversity_scale = diversity_factor * mean_temperature * mean_temperature
    loss = (base_loss_factor * expert_ce + diversity_scale * expert_kl).sum()
    return RideTerms(loss=loss, expert_ce=expert_ce, expert_kl=expert_kl)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, batch mean; the teacher gets no gradient."""
    teacher_probs = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature * temperature * F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


@register_loss("ride")
class RIDELoss(LongtailLoss):
    """RIDE's per-expert LDAM-DRW loss plus the distribution-aware diversity term, and with
    ``distill_factor > 0`` the distillation term (see module doc)."""

    epoch_args = ("drw_epoch",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        class_counts: Sequence[int],
        max_m: float = 0.5,
        s: float = 30.0,
        drw_epoch: int | None = 160,
        beta: float = 0.9999,
        base_temperature: float = 1.0,
        diversity_factor: float = -0.45,
        reweight_factor: float = 0.05,
        base_loss_factor: float = 1.0,
        official_zero_diversity: bool = False,
        distill_factor: float = 0.0,
        distill_temperature: float = 1.5,
        official_distill_repeat: bool = False,
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta)
        self.scale = s
        self.base_temperature = base_temperature
        self.diversity_factor = diversity_factor
        self.base_loss_factor = base_loss_factor
        self.ce_on_mean_logits = official_zero_diversity and diversity_factor == 0
        self.distill_factor = distill_factor
        self.distill_temperature = distill_temperature
        self.official_distill_repeat = official_distill_repeat
        margins = ldam_margins(self.class_counts, max_m, dtype=torch.float64)
        self.register_buffer("margins", margins, persistent=False)
        weights = diversity_weights(self.class_counts, reweight_factor)
        self.register_buffer("diversity_weights", weights, persistent=False)

    def temperatures(self) -> Tensor:
        """Per-class diversity temperatures ``T_c`` (C,) for the current epoch (float64): per class from
        ``drw_epoch`` on, ``base_temperature`` before."""
        if self.class_weights() is not None:
            return self.base_temperature * self.diversity_weights
        return torch.full_like(self.diversity_weights, self.base_temperature)

    def ride_terms(self, expert_logits: Tensor, targets: Tensor) -> RideTerms:
        weights = self.class_weights()
        return ride_loss_terms(
            expert_logits,
            targets,
            self.margins.to(expert_logits),
            self.scale,
            self.temperatures().to(expert_logits),
            self.diversity_factor,
            class_weights=None if weights is None else weights.to(expert_logits),
            base_loss_factor=self.base_loss_factor,
            ce_on_mean_logits=self.ce_on_mean_logits,
        )

    def forward(self, output: ModelOutput, targets: Tensor) -> Tensor:
        expert_logits = require_expert_logits(output, "ride")
        terms = self.ride_terms(expert_logits, require_class_targets(targets, "ride"))
        mean_temperature = self.temperatures().mean()
        self.parts = {
            "ldam_ce": (self.base_loss_factor * terms.expert_ce.sum()).detach(),
            "diversity": (self.diversity_factor * mean_temperature**2 * terms.expert_kl.sum()).detach(),
        }
        if self.distill_factor == 0:
            return terms.loss
        distill = self.distill_factor * distillation_kl(
            expert_logits.mean(0), self._teacher_logits(output), self.distill_temperature
        )
        self.parts["distill"] = distill.detach()
        loss = terms.loss + distill
        return loss * expert_logits.shape[0] if self.official_distill_repeat else loss

    @staticmethod
    def _teacher_logits(output: ModelOutput) -> Tensor:
        teacher_logits = output.aux.get("teacher_logits")
        if teacher_logits is None:
            raise LongtailError(
                "RIDE distillation needs the teacher's logits in output.aux['teacher_logits']; give the method "
                "a teacher checkpoint, or use loss 'ride' (distill_factor=0)."
            )
        return loss_dtype(teacher_logits)


# RIDE with distillation from a teacher: the same loss with distill_factor = 1 by default.
register_loss("ride_distill")(functools.partial(RIDELoss, distill_factor=1.0))


# ---------------------------------------------------------------- expert assignment (router)

ROUTER = "router"  # the parameter selector of the router stage (``stages[i].trainable``)


def router_help_targets(expert_logits: Tensor, targets: Tensor) -> Tensor:
    """t_i = [first i+1 experts wrong] ∧ [some larger prefix right], (K−1, B) bool, from (K, B, C) logits."""
    correct = expert_logits.cumsum(0).argmax(-1) == targets
    correct_later = correct.flip(0).int().cummax(0).values.flip(0).bool()
    return ~correct[:-1] & correct_later[1:]


def router_scores(router: ExpertRouter, expert_logits: Tensor, expert_features: Tensor) -> Tensor:
    """Every router's logit a_i for every image, (K−1, B), from all experts' logits and pooled features."""
    num_routers = expert_logits.shape[0] - 1
    prefix_counts = torch.arange(1, num_routers + 1, device=expert_logits.device).view(-1, 1, 1)
    prefix_means = expert_logits[:num_routers].float().cumsum(0) / prefix_counts
    return torch.stack([router(i, prefix_means[i], expert_features[i]) for i in range(num_routers)])


def router_loss(scores: Tensor, help_targets: Tensor, pos_weight: float) -> Tensor:
    """BCE-with-logits of the router logits (K−1, B) against the help targets, averaged over routers and images."""
    return F.binary_cross_entropy_with_logits(
        scores, help_targets.to(scores.dtype), pos_weight=scores.new_tensor(pos_weight)
    )


@register_loss("ride_router")
class RouterLoss(LongtailLoss):
    """RIDE's expert-assignment loss; reads the router logits from ``output.aux['router_scores']`` (K−1, B)."""

    def __init__(self, class_counts: Sequence[int], pos_weight: float = 100.0) -> None:
        super().__init__(class_counts)
        self.pos_weight = pos_weight

    def forward(self, output: ModelOutput, targets: Tensor) -> Tensor:
        scores = output.aux.get("router_scores")
        if scores is None:
            raise LongtailError(
                "Loss 'ride_router' needs output.aux['router_scores']; use it in a stage of method 'ride' with "
                "trainable: router."
            )
        expert_logits = require_expert_logits(output, "ride_router")
        help_targets = router_help_targets(expert_logits, require_class_targets(targets, "ride_router"))
        return router_loss(scores.float(), help_targets, self.pos_weight)


@dataclass(frozen=True)
class RoutedPrediction:
    """Routed inference: ``logits`` (B, C) the mean over the experts each image used, ``num_experts`` (B,)."""

    logits: Tensor
    num_experts: Tensor


def decision_cut(threshold: float) -> float:
    """The router logit above which σ(a) > ``threshold`` (−inf for 0: every expert is used)."""
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))


def routed_forward(
    network: MultiExpertNetwork, router: ExpertRouter, images: Tensor, threshold: float = 0.5
) -> RoutedPrediction:
    """Evaluate expert i+1 only on the images whose router a_i says so (σ(a_i) > ``threshold``)."""
    shared = network.forward_trunk(images)
    logits, features = network.forward_expert(shared, 0)
    logit_sums = logits.float()
    num_experts = torch.ones(len(images), dtype=torch.long, device=logit_sums.device)
    active = torch.arange(len(images), device=logit_sums.device)
    cut = decision_cut(threshold)
    for index in range(1, network.num_experts):
        scores = router(index - 1, logit_sums[active] / index, features)
        active = active[scores.float() > cut]
        if active.numel() == 0:
            break
        logits, features = network.forward_expert(shared[active], index)
        logit_sums.index_add_(0, active, logits.float())
        num_experts.index_add_(0, active, torch.ones_like(active))
    return RoutedPrediction(logits=logit_sums / num_experts.unsqueeze(1), num_experts=num_experts)


def masked_routed_logits(
    network: MultiExpertNetwork, router: ExpertRouter, images: Tensor, threshold: float = 0.5
) -> Tensor:
    """The logits of ``routed_forward`` with every expert run on every image and its logits added only
    where the router chose it: no data-dependent shapes, so it exports (at the cost of all experts)."""
    shared = network.forward_trunk(images)
    logits, features = network.forward_expert(shared, 0)
    logit_sums = logits.float()
    num_experts = torch.ones_like(logit_sums[:, :1])
    active = torch.ones_like(num_experts, dtype=torch.bool)
    cut = decision_cut(threshold)
    for index in range(1, network.num_experts):
        scores = router(index - 1, logit_sums / index, features)
        active = active & (scores.float() > cut).unsqueeze(1)
        logits, features = network.forward_expert(shared, index)
        logit_sums = logit_sums + torch.where(active, logits.float(), 0.0)
        num_experts = num_experts + active.float()
    return logit_sums / num_experts


@dataclass(frozen=True)
class ComputeCost:
    """Multiply-accumulates per image of the shared trunk, of each expert and of each router."""

    trunk: float
    experts: tuple[float, ...]
    routers: tuple[float, ...] = ()

    def by_experts_used(self) -> list[float]:
        """MACs per image for n = 1 … K experts used: trunk + Σ_{j<n} expert_j + Σ_{j<min(n, K−1)} router_j."""
        return [
            self.trunk + sum(self.experts[:used]) + sum(self.routers[: min(used, len(self.experts) - 1)])
            for used in range(1, len(self.experts) + 1)
        ]

    def macs(self, num_experts: Tensor) -> Tensor:
        """MACs of each image (float64), given how many experts it used (B,)."""
        table = torch.tensor(self.by_experts_used(), dtype=torch.float64, device=num_experts.device)
        return table[num_experts - 1]


def count_macs(compute: Callable[[], Any]) -> tuple[float, Any]:
    """(MACs of ``compute()`` as counted by FlopCounterMode, its result)."""
    with FlopCounterMode(display=False) as counter:
        result = compute()
    return counter.get_total_flops() / 2, result


@torch.no_grad()
def measure_compute(network: MultiExpertNetwork, images: Tensor, router: ExpertRouter | None = None) -> ComputeCost:
    """The ComputeCost of one image shaped like ``images[0]`` (counted on it, in the current train/eval mode)."""
    image = images[:1]
    trunk, shared = count_macs(functools.partial(network.forward_trunk, image))
    experts, outputs = [], []
    for index in range(network.num_experts):
        macs, output = count_macs(functools.partial(network.forward_expert, shared, index))
        experts.append(macs)
        outputs.append(output)
    routers = []
    if router is not None:
        for index in range(router.num_routers):
            logits, features = outputs[index]
            routers.append(count_macs(functools.partial(router, index, logits, features))[0])
    return ComputeCost(trunk=trunk, experts=tuple(experts), routers=tuple(routers))


# ---------------------------------------------------------------- the method


def distills(config: RunConfig) -> bool:
    """Whether the run's main loss has a distillation term (and so needs a teacher)."""
    default = 1.0 if config.loss.name == "ride_distill" else 0.0
    return config.loss.name in ("ride", "ride_distill") and config.loss.args.get("distill_factor", default) > 0


TEACHER_MODES = ("eval", "train")


@register_method("ride")
class RIDE(Method):
    """RIDE training (multi-expert model + ``ride`` / ``ride_distill`` loss), an optional teacher, and the
    expert-assignment router: a stage with ``trainable: router`` and loss ``ride_router`` adds and trains it,
    after which prediction is routed (see module doc).

    ``teacher``: a run directory or checkpoint of any longtail model over the same classes (rebuilt from its
    own config); ``teacher_mode``: 'eval' (default) or 'train', the official code's (BatchNorm with batch
    statistics, see module doc); ``router_top_k``: k of the router's top-k input (at most C);
    ``router_threshold``: route to the next expert while σ(a_i) > threshold; ``report_all_experts``: also
    evaluate every expert on every image after routing, so the report shows the full ensemble
    (``all_experts``) and each expert.
    """

    def __init__(
        self,
        config: RunConfig,
        info: Any,
        teacher: str | None = None,
        teacher_mode: str = "eval",
        router_top_k: int = 30,
        router_hidden_dim: int = 16,
        router_shared_decision: bool = True,
        router_threshold: float = 0.5,
        report_all_experts: bool = True,
    ) -> None:
        super().__init__(config, info)
        if distills(config) and teacher is None:
            raise LongtailError(
                f"Loss '{config.loss.name}' distils from a teacher: set method.args.teacher to a run directory or "
                "checkpoint (e.g. a 6-expert RIDE run), or use loss 'ride'."
            )
        if teacher is not None and not distills(config):
            raise LongtailError(
                f"method.args.teacher is set but loss '{config.loss.name}' does not distil; use loss 'ride_distill'."
            )
        routed = any(stage.trainable == ROUTER for stage in config.stages)
        if routed and not 1 <= router_top_k <= info.num_classes:
            raise LongtailError(
                f"method.args.router_top_k must be between 1 and the number of classes ({info.num_classes}), "
                f"got {router_top_k}."
            )
        if teacher_mode not in TEACHER_MODES:
            raise LongtailError(
                f"method.args.teacher_mode must be one of {', '.join(TEACHER_MODES)}, got '{teacher_mode}'."
            )
        if not 0.0 <= router_threshold <= 1.0:
            raise LongtailError(f"method.args.router_threshold must be in [0, 1], got {router_threshold}.")
        self.teacher_path = teacher
        self.teacher_mode = teacher_mode
        self.router_top_k = router_top_k
        self.router_hidden_dim = router_hidden_dim
        self.router_shared_decision = router_shared_decision
        self.router_threshold = router_threshold
        self.report_all_experts = report_all_experts
        self.teacher: nn.Module | None = None
        self.stage: Stage | None = None
        self._costs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if not isinstance(model, MultiExpertNetwork):
            raise LongtailError(
                f"Method 'ride' needs a multi-expert model, got '{self.config.model.name}'; use e.g. "
                "ride_resnet32 or ride_resnext50_32x4d."
            )
        return model

    def setup(self, context: RunContext) -> None:
        """Load the teacher: frozen, in ``teacher_mode``, never part of the trained model or its checkpoints."""
        super().setup(context)
        if self.teacher_path is None:
            return
        trained = load_teacher(self.teacher_path, context.device)
        if trained.info.num_classes != self.info.num_classes:
            raise LongtailError(
                f"The teacher {self.teacher_path} predicts {trained.info.num_classes} classes, this run has "
                f"{self.info.num_classes}; give a teacher trained on the same classes."
            )
        teacher = trained.model.requires_grad_(False).train(self.teacher_mode == "train")
        if self.config.train.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        self.teacher = teacher

    def prepare_stage(self, stage: Stage, model: nn.Module) -> None:
        super().prepare_stage(stage, model)
        self.stage = stage
        if stage.trainable == ROUTER:
            self._add_router(unwrap(model), stage)

    def _add_router(self, network: MultiExpertNetwork, stage: Stage) -> None:
        if stage.loss.name != "ride_router":
            raise LongtailError(
                f"Stage '{stage.name}' trains the router: give it loss 'ride_router', not '{stage.loss.name}'."
            )
        if hasattr(network, ROUTER):
            return
        head = network.heads[0]
        device = next(network.parameters()).device
        network.router = ExpertRouter(
            head.in_features,
            network.num_experts,
            self.router_top_k,
            self.router_hidden_dim,
            self.router_shared_decision,
        ).to(device)

    def trainable_parameters(self, stage: Stage, model: nn.Module) -> list[nn.Parameter]:
        if stage.trainable == ROUTER:
            return list(unwrap(model).router.parameters())
        return super().trainable_parameters(stage, model)

    def param_groups(self, stage: Stage, model: nn.Module, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        if stage.trainable == ROUTER:
            return [{"params": params}]
        return super().param_groups(stage, model, params)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[Tensor, ModelOutput]:
        output = model(batch.images)
        if self.stage is not None and self.stage.trainable == ROUTER:
            # The network is frozen, so its outputs carry no graph; only the routers are differentiated.
            router = unwrap(model).router
            output.aux["router_scores"] = router_scores(router, output.expert_logits, output.expert_features)
        elif self.teacher is not None:
            with torch.no_grad():
                output.aux["teacher_logits"] = self.teacher(batch.images).logits
        return criterion(output, batch.targets), output

    def predict(self, model: nn.Module, images: Tensor) -> ModelOutput:
        """The full ensemble before the router stage; afterwards the routed prediction, with
        ``aux['experts_per_image']`` and ``aux['gmacs_per_image']`` (and the full ensemble as ``all_experts``)."""
        network = unwrap(model)
        router = getattr(network, ROUTER, None)
        if router is None:
            return model(images)
        routed = routed_forward(network, router, images, self.router_threshold)
        macs = self.compute_cost(network, images).macs(routed.num_experts)
        aux = {"experts_per_image": routed.num_experts.float(), "gmacs_per_image": (macs / 1e9).float()}
        if not self.report_all_experts:
            return ModelOutput(logits=routed.logits, aux=aux)
        full = model(images)
        aux["all_experts_logits"] = full.logits
        return ModelOutput(
            logits=routed.logits,
            features=full.features,
            expert_logits=full.expert_logits,
            expert_features=full.expert_features,
            aux=aux,
        )

    def exportable_logits(self, model: nn.Module, images: Tensor) -> Tensor:
        """The routed prediction of ``predict`` (the full ensemble before the router stage), traceable."""
        network = unwrap(model)
        router = getattr(network, ROUTER, None)
        if router is None:
            return model(images).logits
        return masked_routed_logits(network, router, images, self.router_threshold)

    def compute_cost(self, network: MultiExpertNetwork, images: Tensor) -> ComputeCost:
        """The network's ComputeCost for images shaped like ``images[0]``, measured once and remembered."""
        shape = tuple(images.shape[1:])
        cached = self._costs.get(network)
        if cached is None or cached[0] != shape:
            cached = (shape, measure_compute(network, images, getattr(network, ROUTER, None)))
            self._costs[network] = cached
        return cached[1]
