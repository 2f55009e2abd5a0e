"""Reductions over torch.distributed ranks that are the identity in a single process.

Models and losses call these wherever statistics must agree across ranks (codebook counts, ActNorm's
first-batch moments, the adaptive GAN weight's gradients), and so does the training loop (its logged
means, and stop signals or non-finite losses on any rank); training loops own the process group.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def sum_over_ranks(t: Tensor) -> Tensor:
    """Sum over ranks, in place; `t` itself outside torch.distributed."""
    if in_process_group():
        dist.all_reduce(t)
    return t


def mean_over_ranks(t: Tensor) -> Tensor:
    """Mean over ranks (a new tensor under torch.distributed); `t` itself outside it."""
    if in_process_group():
        return sum_over_ranks(t) / dist.get_world_size()
    return t


def max_over_ranks(t: Tensor) -> Tensor:
    """Maximum over ranks, in place; `t` itself outside torch.distributed."""
    if in_process_group():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t
