"""Data-parallel training on PyTorch's own engine: torchrun's environment, the process group,
sharding, and launching `torch.distributed.run` when params.yaml asks for several processes.

The rules, for N ranks (N = 1 is the plain single process, with identical results):
- `train.batch_size` is the *global* batch: each rank steps on `batch_size / N` examples, so the
  number of optimizer steps, the one-cycle schedule and `train.lr` stay what they are for one
  process. No learning-rate scaling is needed or applied.
- Each rank takes an equal, strided shard of the train split (the last `len % N` examples are
  left out so every rank runs the same number of steps). Validation runs on the whole val split.
- Rank r seeds its RNGs with `train.seed + r` (shuffling and dropout differ per shard); the
  initial weights are rank 0's, which DistributedDataParallel broadcasts when it wraps the model.
- Only rank 0 tracks to MLflow and writes outputs. On the CPU a run is bit-identical for a
  given N (gloo's reductions run in a fixed order); a different N gives a different model.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mlpipe.core.errors import MlpipeError

log = logging.getLogger(__name__)

# Set by torchrun (torch.distributed.run) in every worker it starts.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that tracks and writes outputs."""
        return self.rank == 0

    def local_batch_size(self, global_batch_size: int) -> int:
        """Each rank's share of the global batch; it must divide evenly."""
        if global_batch_size % self.size:
            nearest = global_batch_size // self.size * self.size or self.size
            raise MlpipeError(
                f"train.batch_size {global_batch_size} is the global batch and must be a multiple of "
                f"the {self.size} training processes; use e.g. {nearest}"
            )
        return global_batch_size // self.size

    def shard(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """This rank's equal, strided share of tensors that share their first dimension."""
        if self.size == 1:
            return list(tensors)
        per_rank = len(tensors[0]) // self.size
        return [t[self.rank :: self.size][:per_rank].contiguous() for t in tensors]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as each training step calls it: DDP across processes, else the model."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Element-wise sums over all ranks (the values themselves for one process)."""
        if self.size == 1:
            return list(values)
        stacked = torch.stack([v.detach().double() for v in values])
        dist.all_reduce(stacked)
        return list(stacked.unbind())


SINGLE_PROCESS = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(name in os.environ for name in LAUNCHER_VARIABLES)


def _world_from_environment(backend: str) -> World:
    try:
        rank, local_rank, size = (int(os.environ[name]) for name in LAUNCHER_VARIABLES)
    except ValueError as e:
        values = ", ".join(f"{n}={os.environ[n]!r}" for n in LAUNCHER_VARIABLES)
        raise MlpipeError(f"torchrun's environment is not integers: {values}") from e
    return World(rank, local_rank, size, backend if size > 1 else None)


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """Join torchrun's process group for the block (gloo on CPU, NCCL on CUDA); yield this
    rank's World and its device (cuda:LOCAL_RANK on GPUs). Without torchrun: one process."""
    if not launched():
        yield SINGLE_PROCESS, device
        return
    world = _world_from_environment("nccl" if device.type == "cuda" else "gloo")
    if world.size == 1:
        yield world, device
        return
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise MlpipeError(
                f"local rank {world.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                "lower train.nproc_per_node (or torchrun's --nproc_per_node)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(world.backend)  # env:// rendezvous: torchrun set MASTER_ADDR/PORT
    log.info("rank %d of %d (%s) on %s", world.rank, world.size, world.backend, device)
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def launch_command(nproc_per_node: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command that runs `mlpipe ARGV` in nproc_per_node processes on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "-m",
        "mlpipe",
        *argv,
    ]


def relaunch_if_requested(nproc_per_node: int, device: torch.device, argv: Sequence[str]) -> None:
    """With nproc_per_node > 1 outside torchrun, replace this process by torchrun running the
    same command in nproc_per_node processes; otherwise return and let the caller go on."""
    if nproc_per_node == 1 or launched():
        return
    if device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
        raise MlpipeError(
            f"train.nproc_per_node is {nproc_per_node} but only {torch.cuda.device_count()} GPUs are visible"
        )
    env = dict(os.environ)
    if device.type == "cpu":
        # gloo picks the interface of the host name, which may not route on a single machine.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = launch_command(nproc_per_node, argv)
    log.info("launching %d training processes: %s", nproc_per_node, " ".join(command[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)  # noqa: S606 (our own interpreter, no shell)
