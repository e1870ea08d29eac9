"""``train.precision``: the autocast dtype of each setting, and ``auto`` resolved on a device."""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_PRECISION = "auto"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively. A CPU without AVX-512 (BF16) or AMX emulates it, which
    made a ResNet-32 step over 10x slower than float32 on an AVX2-only EPYC."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def effective_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``: ``auto`` is bf16 where the device computes it natively,
    else fp32; the other values are kept."""
    if precision == AUTO_PRECISION:
        return "bf16" if native_bf16(device) else "fp32"
    return precision
