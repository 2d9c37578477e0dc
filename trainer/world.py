"""A trainer process's place in a data-parallel run (trainer/distributed.py): its rank, the world's size, and the
few collectives the loop needs. torch is imported only by a run of several processes: one alone (and the test
suite's fake trainer, which cannot import torch) never touches it here.

The launcher (trainer.ranks, or torchrun) sets torchrun's variables, read here and nowhere else."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from hone_kernel.trainer_contract import TrainSpec
from trainer.failures import FatalError

# Ranks wait on each other while rank 0 evaluates or checkpoints a large model: generous, but not forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, batch: list) -> list:
        """This rank's examples of a step's global batch: every size-th, from its rank."""
        return batch[self.rank :: self.size]

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (as float64: token counts stay exact)."""
        if not self.parallel:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def most(self, *values: int) -> list[int]:
        """Each value's maximum over the ranks."""
        if not self.parallel:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true on every rank if it is true on any."""
        if not self.parallel:
            return list(flags)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([int(f) for f in flags], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(v) for v in tensor.tolist()]


def join(spec: TrainSpec) -> World:
    """This process's place in the run, with the process group joined when there are several."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    expected = spec.resources.world_size
    if size != expected:
        raise FatalError(
            "invalid_resources",
            f"The job asks for {expected} trainer process(es) ({spec.resources.nodes} node(s) x "
            f"{spec.resources.gpus_per_node}), but this one was started as one of {size}: the executor's launch "
            "does not match the spec.",
        )
    if size == 1:
        return World()
    import torch
    import torch.distributed as dist

    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)  # torch.device("cuda") is this rank's device from here on
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
    return world


def leave(world: World) -> None:
    if not world.parallel:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
