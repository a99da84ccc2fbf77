"""Multi-process runtime: the same protocol over torch.distributed, one block of users per process.

    trustlora run runtime=distributed world_size=2          # spawns 2 local processes (gloo)
    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST:29500 -m trustlora.cli run runtime=distributed

Each process loads the frozen base model and hosts ``users_of_rank(rank)``; every exchange is a collective
all-gather (``comm/distributed.py``). Under torchrun (``RANK``/``WORLD_SIZE`` in the environment) the
process joins that group instead of spawning. The process hosting user 0 writes the run directory.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from trustlora.config import Config, RunError, from_dict, to_dict


def _backend(cfg: Config) -> str:
    return "nccl" if cfg.device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def _bind_gpu(cfg: Config) -> None:
    """nccl wants each process's current CUDA device set to the GPU it uses."""
    if _backend(cfg) == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def _worker(rank: int, cfg_dict: dict, world: int, init_file: str, progress: bool) -> None:
    from trustlora.api import run_users
    from trustlora.comm.distributed import TorchDistributed

    faulthandler.enable()  # a worker killed by a fatal signal prints where each of its Python threads was
    cfg = from_dict(cfg_dict)
    os.environ["LOCAL_RANK"] = str(rank)  # one GPU per process when device is cuda/auto (model.base.resolve_device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _bind_gpu(cfg)
    dist.init_process_group(
        _backend(cfg), init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=_timeout(cfg)
    )
    try:
        run_users(
            cfg, TorchDistributed(cfg.data.users), progress=progress, log=print if rank == 0 else (lambda *a: None)
        )
        # every rank done with the group before any tears its connections down: a mitigation, not a proven fix, of a
        # rare SIGABRT in a rank that had finished early (seen once more with it); not after a failure: a peer that
        # died would leave this barrier waiting for the timeout
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # done, every file written and closed: leave without the interpreter's teardown, where gloo's C++ threads are
    # destroyed after the interpreter (one candidate for a rare SIGABRT, "terminate called without an active
    # exception", after the last round; the spawning parent then stops the writer before its summary)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(cfg: Config, progress: bool = True, log=print) -> Path:
    """Run ``cfg`` over torch.distributed; returns the run directory."""
    from trustlora.api import default_out, run_users
    from trustlora.checkpoint import resume_round
    from trustlora.comm.distributed import TorchDistributed

    if dist.is_initialized() or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        if not dist.is_initialized():
            _bind_gpu(cfg)
            dist.init_process_group(_backend(cfg), init_method="env://", timeout=_timeout(cfg))
        try:
            return run_users(cfg, TorchDistributed(cfg.data.users), progress=progress, log=log)
        except (RuntimeError, dist.DistError) as e:  # a peer died or hung: the collective failed or timed out
            if isinstance(e, RunError) or "TRUSTLORA_FAIL_AT_ROUND" in str(e) or not cfg.out:
                raise  # (run_users sets cfg.out to the run directory before any collective)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RunError(
                f"rank {dist.get_rank()}: a peer process stopped answering ({first}); {_committed(Path(cfg.out), cfg)}"
            ) from e
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    resume_round(cfg, out)  # refuse a bad out before starting processes
    world = cfg.world_size
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        log(f"starting {world} processes (torch.distributed, {_backend(cfg)})")
        try:
            torch.multiprocessing.start_processes(
                _worker, args=(to_dict(cfg), world, init_file, progress), nprocs=world, start_method="spawn", join=True
            )
        except torch.multiprocessing.ProcessExitedException as e:  # killed or crashed outside Python
            how = f"was killed by {e.signal_name}" if e.signal_name else f"exited with code {e.exit_code}"
            raise RunError(
                f"process rank {e.error_index} ({_hosts(cfg, e.error_index)}) {how}; {_committed(out, cfg)}"
            ) from None
        except torch.multiprocessing.ProcessRaisedException as e:
            last = [x for x in str(e).strip().splitlines() if x.strip()][-1][:300]
            if "TRUSTLORA_FAIL_AT_ROUND" in last:
                raise RuntimeError(last) from None
            raise RunError(
                f"process rank {e.error_index} ({_hosts(cfg, e.error_index)}) failed: {last}; {_committed(out, cfg)}"
            ) from None
    return out


def _timeout(cfg: Config) -> timedelta:
    return timedelta(seconds=float(cfg.comm.timeout))


def _hosts(cfg: Config, rank: int) -> str:
    from trustlora.comm.distributed import users_of_rank

    users = users_of_rank(rank, cfg.data.users, cfg.world_size)
    return f"users {users[0]}-{users[-1]}" if len(users) > 1 else f"user {users[0]}"


def _committed(out: Path, cfg: Config) -> str:
    """'the last committed round is r of R; rerun the same command to resume' (from checkpoint.json)."""
    from trustlora.checkpoint import MARKER
    from trustlora.protocol import round_schedule

    rounds = len(round_schedule(cfg.train.steps, cfg.train.warmup, cfg.train.period))
    try:
        r = int(json.loads((out / MARKER).read_text())["round"])
    except (OSError, ValueError, KeyError):
        r = 0
    return f"the last committed round is {r} of {rounds} ({out}); rerun the same command to resume"
