"""Communicators: the only transport seam. Every implementation offers the same calls, so neither the round
(``protocol.py``) nor the run loop (``api.run_users``) branches on the runtime.

``InProcess`` hosts every user in one process (simulation: gathers are the identity). ``TorchDistributed``
(``comm/distributed.py``) hosts a slice of the users per rank::

    comm = InProcess(n_users=6)
    everyone = comm.all_gather(local_rows, kind="delta")   # [n_local, ...] -> [N, ...]  (bytes counted per kind)
    parts = comm.gather_objects(record)                      # every process's Python object, in rank order
    comm.barrier()                                           # every process got here
    comm.sent_bytes()   # {"delta": bytes per user this round, ...}
"""

from __future__ import annotations

from typing import Protocol

import torch


class Communicator(Protocol):
    n_users: int
    local_users: list[int]

    def all_gather(self, local: torch.Tensor, kind: str) -> torch.Tensor: ...

    def gather_objects(self, obj) -> list: ...

    def barrier(self) -> None: ...

    def sent_bytes(self) -> dict[str, int]: ...

    def reset_bytes(self) -> None: ...


class ByteCounter:
    """Counts, per message kind, the bytes one user sends in the current round."""

    def __init__(self) -> None:
        self._bytes: dict[str, int] = {}

    def count(self, local: torch.Tensor, kind: str) -> None:
        per_user = local[0].numel() * local.element_size() if local.shape[0] else 0
        self._bytes[kind] = self._bytes.get(kind, 0) + per_user

    def sent_bytes(self) -> dict[str, int]:
        return dict(self._bytes)

    def reset_bytes(self) -> None:
        self._bytes = {}


class InProcess(ByteCounter):
    """Every user lives in this process: an all-gather is the identity (bytes are still counted)."""

    def __init__(self, n_users: int):
        super().__init__()
        self.n_users = n_users
        self.local_users = list(range(n_users))

    def all_gather(self, local: torch.Tensor, kind: str) -> torch.Tensor:
        if local.shape[0] != self.n_users:
            raise ValueError(f"in-process all_gather expects all {self.n_users} users, got {local.shape[0]}")
        self.count(local, kind)
        return local

    def gather_objects(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        return None
