"""What this machine's CPU can do fast, read once from ``/proc/cpuinfo`` (Linux; elsewhere: nothing).

The fast paths of trustlora choose by it, so a machine always takes the same path (and gives the same numbers):

    from trustlora import cpu
    cpu.model_name()     # 'AMD EPYC ...' (what a GEMM peak is recorded under, trustlora.flops.machine_key)
    cpu.flags()          # frozenset of the kernel's CPU flags ('avx2', 'avx512_bf16', 'amx_bf16', ...)
    cpu.has_bf16()       # native bf16 (AVX512-BF16 or AMX): precision 'auto' picks bf16
    cpu.has_amx()        # AMX tiles: bf16 matrix products inside fused kernels (flash attention) run near the GEMM
                         # peak; with AVX512-BF16 alone PyTorch's CPU flash kernel runs bf16 at ~40 % of it

Run ``python -m trustlora.cpu`` to print what it found.
"""

from __future__ import annotations

import functools


def _field(name: str) -> str | None:
    """The first processor's ``name`` field from ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.partition(":")[2].strip() for ln in f if ln.startswith(name)), None)
    except OSError:
        return None


@functools.cache
def flags() -> frozenset[str]:
    """The first processor's flags (empty where there are none)."""
    return frozenset((_field("flags") or "").split())


@functools.cache
def model_name() -> str:
    """The processor's model name ('cpu' where there is none)."""
    return _field("model name") or "cpu"


def has_bf16() -> bool:
    """Native bf16 matrix units (AVX512-BF16 or AMX); without them bf16 matmuls are emulated and run ~50x slower
    than fp32 (measured: 0.7 vs 56 GFLOP/s on a 2-core AVX2 EPYC)."""
    return bool({"avx512_bf16", "amx_bf16"} & flags())


def has_amx() -> bool:
    """AMX bf16 tiles (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in flags()


if __name__ == "__main__":
    print(f"native bf16: {has_bf16()}, AMX: {has_amx()}")
