"""DistributedDataParallel plumbing: process group from torchrun's environment, metric reduction, gathering."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistContext:
    """Join the process group that ``torchrun`` describes (nccl on CUDA, gloo on CPU); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    context = DistContext(
        rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return context


def shutdown_distributed(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (the tensor itself when running alone)."""
    if context.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Concatenate every process's (N_r, ...) tensor along dim 0, in rank order; N_r may differ."""
    if not context.enabled:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(context.world_size)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    largest = int(max(size.item() for size in sizes))
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[: int(size.item())] for part, size in zip(gathered, sizes)])


def broadcast_object(value: object, context: DistContext) -> object:
    """Rank 0's ``value`` on every process."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()
