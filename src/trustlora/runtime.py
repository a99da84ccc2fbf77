"""Multi-process runtime: the same protocol over torch.distributed, one block of users per process.

    trustlora run runtime=distributed world_size=2          # spawns 2 local processes (gloo)
    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST:29500 -m trustlora.cli run runtime=distributed

Each process loads the frozen base model and hosts ``users_of_rank(rank)``; every exchange is a collective
all-gather (``comm/distributed.py``). Under torchrun (``RANK``/``WORLD_SIZE`` in the environment) the
process joins that group instead of spawning. The process hosting user 0 writes the run directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from trustlora.config import Config, from_dict, to_dict


def _backend(cfg: Config) -> str:
    return "nccl" if cfg.device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def _bind_gpu(cfg: Config) -> None:
    """nccl wants each process's current CUDA device set to the GPU it uses."""
    if _backend(cfg) == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def _worker(rank: int, cfg_dict: dict, world: int, init_file: str, progress: bool) -> None:
    from trustlora.api import run_users
    from trustlora.comm.distributed import TorchDistributed

    cfg = from_dict(cfg_dict)
    os.environ["LOCAL_RANK"] = str(rank)  # one GPU per process when device is cuda/auto (model.base.resolve_device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _bind_gpu(cfg)
    dist.init_process_group(_backend(cfg), init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        run_users(
            cfg, TorchDistributed(cfg.data.users), progress=progress, log=print if rank == 0 else (lambda *a: None)
        )
    finally:
        dist.destroy_process_group()


def launch(cfg: Config, progress: bool = True, log=print) -> Path:
    """Run ``cfg`` over torch.distributed; returns the run directory."""
    from trustlora.api import default_out, run_users
    from trustlora.checkpoint import resume_round
    from trustlora.comm.distributed import TorchDistributed

    if dist.is_initialized() or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        if not dist.is_initialized():
            _bind_gpu(cfg)
            dist.init_process_group(_backend(cfg), init_method="env://")
        return run_users(cfg, TorchDistributed(cfg.data.users), progress=progress, log=log)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    resume_round(cfg, out)  # refuse a bad out before starting processes
    world = cfg.world_size
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        log(f"starting {world} processes (torch.distributed, {_backend(cfg)})")
        torch.multiprocessing.start_processes(
            _worker, args=(to_dict(cfg), world, init_file, progress), nprocs=world, start_method="spawn", join=True
        )
    return out
