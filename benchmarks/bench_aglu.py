"""AGLU vs ReLU training-step time: forward, cross-entropy, backward and SGD step on random data.

    python benchmarks/bench_aglu.py                                  # ResNet-32, batch 128, 32x32, bf16
    python benchmarks/bench_aglu.py --steps 3 --warmup 2             # quick check
    python benchmarks/bench_aglu.py --activations relu aglu silu --model se_resnet32 --threads 1

Each activation gets its own model (same seed), channels_last, bf16 autocast, SGD with momentum. The
models' steps are interleaved (relu, aglu, relu, aglu, ...) so that load from other processes hits them
alike, and the median step time is reported with its ratio to the first activation. ``aglu`` uses the
library's default kernels (under bf16 on the CPU: forward and backward read tables of AGLU and its
derivatives at all 2^16 bf16 values, in the C++ kernels, built on first use), ``aglu_compiled`` the
``torch.compile``-fused elementwise kernels instead (``set_aglu_kernels('compiled')``; the first steps
compile them), ``aglu_eager`` the same autograd function without compiling,
``aglu_autograd`` plain autograd through the forward formula (how the reference's ``Unified`` runs), to
show what fusing buys.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import interleaved_step_times
from torch import nn

from longtail.engine.host_memory import keep_freed_memory
from longtail.models import create
from longtail.models.activations import AGLU, AGLU_LAMBDA_EPS, replace_activations
from longtail.models.aglu_kernels import set_aglu_kernels


class AutogradAGLU(AGLU):
    """AGLU through plain autograd of the forward formula (no fused function), for comparison."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l = F.relu(self.lambda_param) + AGLU_LAMBDA_EPS
        return x * torch.exp(F.logsigmoid(self.kappa_param * x - torch.log(l)) / l)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--activations", nargs="+", default=["relu", "aglu", "aglu_compiled"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per activation")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles the kernels)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def build(args: argparse.Namespace, activation: str) -> nn.Module:
    torch.manual_seed(0)
    model = create(args.model, num_classes=args.num_classes)
    if activation == "aglu_autograd":
        replace_activations(model, "aglu")
        for module in list(model.modules()):
            if isinstance(module, AGLU):
                module.__class__ = AutogradAGLU
    else:
        replace_activations(model, activation.removesuffix("_eager").removesuffix("_compiled"))
    return model.to(args.device, memory_format=torch.channels_last)


def training_step(args: argparse.Namespace, activation: str) -> Callable[[], None]:
    model = build(args, activation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator)
    images = images.to(args.device, memory_format=torch.channels_last)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(args.device)
    device_type = torch.device(args.device).type
    kernels = {"aglu_eager": "eager", "aglu_compiled": "compiled"}.get(activation, "auto")

    def step() -> None:
        set_aglu_kernels(kernels)
        autocast = (
            torch.autocast(device_type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()
        )
        with autocast:
            loss = F.cross_entropy(model(images).logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    args = parse_args()
    keep_freed_memory()  # as the trainer does on the CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {activation: training_step(args, activation) for activation in args.activations}
    times = interleaved_step_times(steps, args.warmup, args.steps)
    medians = {activation: statistics.median(values) * 1e3 for activation, values in times.items()}
    baseline = medians[args.activations[0]]
    print(
        f"{args.model}, batch {args.batch_size}, {args.size}x{args.size}, {args.device}, amp {args.amp}, "
        f"channels_last, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps"
    )
    print(f"{'activation':<16}{'ms/step':>10}{'min ms':>10}{'ratio':>8}")
    for activation, median in medians.items():
        print(f"{activation:<16}{median:>10.1f}{min(times[activation]) * 1e3:>10.1f}{median / baseline:>8.2f}")


if __name__ == "__main__":
    main()
