"""Run a block with a given number of torch intra-op threads, restoring the previous number after.

Batched augmentation and bulk decoding issue many small tensor ops; on CPU, intra-op parallelism costs
them more than it gains (thread hand-offs per op), and on a busy machine it can slow them by orders of
magnitude. They run single-threaded; the caller's setting (for the model) is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)
