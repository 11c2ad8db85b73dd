"""Data-parallel training across processes (torchrun): process group set-up and the collectives the
training loop needs.

    torchrun --nproc_per_node 8 -m cora train ...        # one process per GPU (NCCL)
    torchrun --nproc_per_node 2 -m cora train --device cpu ...   # CPU processes (gloo)

Each process takes its share of every global batch and computes the loss of its share normalised by the
global number of ground truths; `average_gradients` then makes every process step with the gradient of
the whole global batch. This is DistributedDataParallel's arithmetic without its wrapper: class dropout
runs the model twice before one backward, which the wrapper's reducer does not allow, and the trainable
part (localizer or prompt) is small enough that one flat all-reduce per step costs little.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device) -> DistInfo:
    """Joins the process group that torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) and
    returns this process's rank and device; a plain process (no WORLD_SIZE or 1) gets rank 0 of 1.
    CUDA: NCCL, one GPU per process (cuda:LOCAL_RANK); CPU: gloo."""
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def average_gradients(params: list[Tensor]) -> None:
    """Replaces each parameter's gradient by its mean over processes (a missing gradient counts as 0).
    One all-reduce of all gradients flattened together."""
    world = world_size()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset: offset + g.numel()].view_as(p).clone()
        offset += g.numel()


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over processes (for logging), in a fixed key order."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] without a process group)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
