"""torchrun / DistributedDataParallel: rank facts, one shared run directory, reductions.

`torchrun --nproc_per_node=N train.py ...` runs the same config in N processes. The process
group starts before Hydra picks the run directory, so rank 0 can choose it and broadcast it:
every rank writes into one directory, and only rank 0 writes files there.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from finetune.engine.distributed_env import launched_by_torchrun
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op otherwise).

    NCCL for CUDA tensors and gloo for CPU ones, so small CPU objects (the run directory, a
    stop flag) can be broadcast even on GPUs.
    """
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    )
    if dist.is_initialized():
        return info
    if torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if info.local_rank >= visible:
            raise FinetuneError(
                f"torchrun started more processes per node than GPUs ({visible}); "
                f"use --nproc_per_node={visible} or fewer"
            )
        torch.cuda.set_device(info.local_rank)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return info


def dist_info() -> DistInfo:
    """Rank facts of the current process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def broadcast_from_main(value: object) -> object:
    """Rank 0's `value` on every rank."""
    if not dist_info().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist_info().enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a copy; the input is left as it was)."""
    if not dist_info().enabled:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on any rank: ranks must agree to stop at the same step."""
    if not dist_info().enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item())


def wrap_ddp(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """DistributedDataParallel over the trainable parameters (frozen ones are not synced)."""
    if not dist_info().enabled:
        return model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def rank_device(name: str, info: DistInfo) -> torch.device | None:
    """Each rank's own GPU under torchrun, or None to let the usual device choice decide."""
    if info.enabled and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return None


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def quiet_other_ranks() -> None:
    """Ranks other than 0 write no train.log and print warnings only: one voice per run."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
