"""The device and the data-parallel process group (torchrun), a no-op in a single process."""
from __future__ import annotations

import os
from typing import List, Sequence

import torch
import torch.distributed as dist

from .errors import UsageError

__all__ = ["resolve_device", "DistributedContext"]


def resolve_device(arg: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device."""
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(arg)
    except RuntimeError:
        raise UsageError(f"--device {arg}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {arg}: CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {arg}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"--device {arg}: expected auto, cpu, cuda or cuda:N")
    return dev


class DistributedContext:
    """This process's rank and device; joins the process group when started by torchrun."""

    def __init__(self, device_arg: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = resolve_device(device_arg, self.local_rank, self.world)
        self._owns_group = False
        if self.enabled and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self._owns_group = True

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend() if self.enabled else "none"

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> List[float]:
        """``values`` summed over the processes."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
