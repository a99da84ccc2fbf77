"""torch.distributed communicator: each process (rank) hosts a contiguous block of users.

The protocol is SPMD: every rank executes the same calls in the same order, so every message is one
collective all-gather. Ranks may host different numbers of users (N not divisible by the world size):
rows are padded to the largest block for the collective and the padding is dropped afterwards.

    dist.init_process_group("gloo", ...)       # done by trustlora.runtime
    comm = TorchDistributed(n_users=6)          # rank r hosts users_of_rank(r, 6, world)
    everyone = comm.all_gather(local_rows, "delta")
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trustlora.comm import ByteCounter


def users_of_rank(rank: int, n_users: int, world: int) -> list[int]:
    """Contiguous block of user ids hosted by ``rank`` (sizes differ by at most one)."""
    start = rank * n_users // world
    stop = (rank + 1) * n_users // world
    return list(range(start, stop))


class TorchDistributed(ByteCounter):
    """All-gathers over the default process group (gloo for CPU tensors, nccl for CUDA tensors)."""

    def __init__(self, n_users: int):
        super().__init__()
        self.n_users = n_users
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        if self.world > n_users:
            raise ValueError(f"world size {self.world} exceeds the number of users {n_users}")
        self.blocks = [users_of_rank(r, n_users, self.world) for r in range(self.world)]
        self.local_users = self.blocks[self.rank]

    def all_gather(self, local: torch.Tensor, kind: str) -> torch.Tensor:
        if local.shape[0] != len(self.local_users):
            raise ValueError(f"rank {self.rank} hosts {len(self.local_users)} users, got {local.shape[0]} rows")
        self.count(local, kind)
        width = max(len(b) for b in self.blocks)
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[: len(b)] for p, b in zip(parts, self.blocks, strict=True)])

    def gather_objects(self, obj) -> list:
        """Every rank's Python object, in rank order (used to merge metrics records)."""
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Every rank got here (an object gather: bounded by the process group's timeout, like every collective)."""
        self.gather_objects(None)
