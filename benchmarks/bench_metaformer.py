"""MetaFG training throughput (images/s): forward, cross-entropy, backward and the trainer's (fused) AdamW step
on random data.

    python benchmarks/bench_metaformer.py                       # MetaFG-0 at 32x32 and 224x224
    python benchmarks/bench_metaformer.py --sizes 32 --steps 3 --warmup 1 --batch-size 8   # quick check
    python benchmarks/bench_metaformer.py --device cuda --amp bf16 --channels-last --meta

Prints one line per (size, channels-last) setting and, with --json, writes the results there. Needs the
package importable (``make install``, or ``PYTHONPATH=.``). On a CPU shared with other jobs, ``--threads 1``
avoids thread oversubscription (8x faster than 2 threads under load here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longtail.config import OptimConfig
from longtail.engine.host_memory import keep_freed_memory
from longtail.engine.optim import build_optimizer
from longtail.models import create

SPATIOTEMPORAL = {"spatiotemporal": (4, 3)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="metafg_0", choices=["metafg_0", "metafg_1", "metafg_2"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 at 32x32, 32 at 224x224")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last memory format")
    parser.add_argument("--meta", action="store_true", help="add the 7-d spatio-temporal meta tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this file")
    return parser.parse_args()


def default_batch_size(size: int) -> int:
    return 128 if size <= 64 else 32


def time_training(args: argparse.Namespace, size: int, channels_last: bool) -> dict[str, object]:
    device = torch.device(args.device)
    batch_size = args.batch_size or default_batch_size(size)
    model = create(args.model, num_classes=args.num_classes, img_size=size,
                   meta_groups=SPATIOTEMPORAL if args.meta else None).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer([{"params": list(model.parameters())}], OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05))
    images = torch.randn(batch_size, 3, size, size, device=device).to(memory_format=memory_format)
    targets = torch.randint(0, args.num_classes, (batch_size,), device=device)
    meta = torch.randn(batch_size, 7, device=device) if args.meta else None
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(images, meta).logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "model": args.model, "size": size, "batch_size": batch_size, "device": str(device), "amp": args.amp,
        "channels_last": channels_last, "meta": args.meta, "steps": args.steps,
        "images_per_s": round(batch_size * args.steps / seconds, 2),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    keep_freed_memory()  # as the trainer does on the CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for size in args.sizes:
        for channels_last in ([False, True] if args.channels_last else [False]):
            result = time_training(args, size, channels_last)
            results.append(result)
            print(
                f"{result['model']} {size}x{size} batch {result['batch_size']} {result['device']} amp={args.amp} "
                f"channels_last={channels_last} meta={args.meta}: {result['images_per_s']} images/s"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
