"""Distributed runs on PyTorch's own engine: ``torchrun --nproc_per_node=N -m kdistill run CONFIG``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process group
(gloo on CPU, NCCL on CUDA). Without them every helper here is a no-op for a single process, so the
pipeline and the training loop have one code path. Only rank 0 writes files; every rank trains.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist


class DistError(RuntimeError):
    """The ranks of a distributed run disagree (config, data) or the process group cannot start."""


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; under torchrun each rank takes GPU ``LOCAL_RANK``."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise DistError("device=cuda was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); otherwise do nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or enabled():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def teardown() -> None:
    if enabled():
        dist.destroy_process_group()


def barrier() -> None:
    if enabled():
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (float64 on CPU: exact for counts, fine for loss sums)."""
    if not enabled():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not enabled():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (the others pass anything, e.g. ``None``)."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(text: str, what: str) -> None:
    """Fail fast, on every rank, when the ranks were given different ``what`` (e.g. the resolved config)."""
    if not enabled():
        return
    digests = gather_objects(hashlib.sha256(text.encode()).hexdigest()[:12])
    if len(set(digests)) > 1:
        per_rank = ", ".join(f"rank {r}: {d}" for r, d in enumerate(digests))
        raise DistError(
            f"the ranks of this distributed run disagree on the {what} ({per_rank}); give every rank "
            "the same config file and overrides"
        )


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, so that all ranks evaluate one model."""
    if not enabled():
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)
