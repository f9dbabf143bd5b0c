"""Where training runs: device choice, seeding, DistributedDataParallel set-up, peak memory."""

from __future__ import annotations

import os
import random
import resource
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from livecellseg.errors import LivecellsegError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(wanted: str, local_rank: int = 0) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise LivecellsegError("train.device is 'cuda' but no CUDA device is visible; use 'auto'")
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates it and bfloat16 autocast is slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype `train.amp` asks for on `device`: float16 on CUDA, bfloat16 on a CPU
    with native bfloat16, None (float32) otherwise or when amp is off."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def is_main() -> bool:
    """Rank 0, or not distributed: the process that validates, logs and saves."""
    return not dist.is_initialized() or dist.get_rank() == 0


@dataclass(frozen=True)
class Runtime:
    """One training process: its device, and its place among `world` (torchrun sets them)."""

    device: torch.device
    rank: int
    world: int

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DDP records the trainable set when it wraps the model, so
        wrap again whenever that set changes (a new phase)."""
        return DistributedDataParallel(model) if self.distributed else model

    def sampler(self, dataset: Dataset, seed: int, epoch: int) -> DistributedSampler | None:
        if not self.distributed:
            return None
        sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            dist.destroy_process_group()


def start_runtime(wanted_device: str) -> Runtime:
    """The device for this process, and the process group when torchrun started several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(wanted_device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Runtime(device, dist.get_rank() if world > 1 else 0, world)
