"""How fast this machine's CPU is: matmul GFLOP/s in float32 and bfloat16, and whether it has bf16 instructions.

Machines of one kind differ by up to ~3x in float32 speed, and a CPU without AVX-512-BF16 (or AMX) runs a bf16
matmul about 100x slower than one with it. The demo prints these figures, the test suite scales its time limits
by them (``tests/conftest.py``), and training warns when it selects bf16 on a CPU that would crawl.

    python -m odvla.platform.machine            # prints one line
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

REFERENCE_F32_GFLOPS = 50.0
"""The slowest machine the project's budgets are set for: a 1024^2 float32 matmul on 2 threads at 50 GFLOP/s (an
AVX2 EPYC). The demo's 10 minutes and the suite's 40 minutes hold there; time limits scale from it."""

BF16_ISAS = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) under which oneDNN runs bf16 matmuls natively."""

_ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
              "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
"""oneDNN's ``ONEDNN_MAX_CPU_ISA`` values in increasing order; a cap below AVX512_CORE_BF16 disables native bf16."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """True when bf16 matmuls run on bf16 instructions here: the CPU has AVX-512-BF16 or AMX-BF16 and
    ``ONEDNN_MAX_CPU_ISA`` does not cap oneDNN below them (the cap is how a fast machine imitates a slow one)."""
    if not set(BF16_ISAS) & cpu_flags():
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    if cap and cap != "ALL" and cap in _ISA_ORDER:
        return _ISA_ORDER.index(cap) >= _ISA_ORDER.index("AVX512_CORE_BF16")
    return True


@dataclass(frozen=True)
class MachineSpeed:
    f32_gflops: float
    """1024 x 1024 x 1024 float32 matmul, torch's intra-op threads."""
    bf16_gflops: float
    """[64, 896] x [896, 4096] bfloat16 matmul (a Qwen2.5-0.5B MLP projection; few rows, so a CPU without bf16
    instructions measures it in about a second)."""
    threads: int
    native_bf16: bool

    def slowdown(self, reference_gflops: float = REFERENCE_F32_GFLOPS) -> float:
        """How many times slower in float32 than a machine at ``reference_gflops`` (>= 1: never shortens a
        budget)."""
        return max(1.0, reference_gflops / max(self.f32_gflops, 1e-3))

    def line(self) -> str:
        return (f"float32 matmul {self.f32_gflops:.0f} GFLOP/s, bfloat16 {self.bf16_gflops:.1f} GFLOP/s "
                f"({'native' if self.native_bf16 else 'no'} bf16 instructions), {self.threads} torch threads")


def _gflops(a, b, seconds: float) -> float:
    import torch

    with torch.inference_mode():
        a @ b  # warm-up: oneDNN / BLAS kernel selection
        n, t0 = 0, time.perf_counter()
        while True:
            a @ b
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * n / dt / 1e9


@lru_cache(maxsize=None)
def measure(seconds: float = 0.5) -> MachineSpeed:
    """Measure once per process (about ``2 x seconds``, a few more on a CPU without bf16 instructions)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    f32 = _gflops(a, b, seconds)
    x = torch.randn(64, 896, generator=g).bfloat16()
    w = torch.randn(896, 4096, generator=g).bfloat16()
    bf16 = _gflops(x, w, seconds)
    return MachineSpeed(f32_gflops=f32, bf16_gflops=bf16, threads=torch.get_num_threads(),
                        native_bf16=native_bf16())


_warned: set = set()


def warn_cpu_bf16(where: str, setting: str) -> bool:
    """Warn once per process when bf16 is selected on a CPU without bf16 instructions (every bf16 matmul then runs
    ~100x slower than float32), naming the setting that turns it off. Returns whether it warned."""
    if native_bf16() or where in _warned:
        return False
    _warned.add(where)
    log.warning("%s: bf16 on a CPU without bf16 instructions (no %s): every bf16 matmul runs about 100x slower "
                "than float32 here; set %s to train in float32 on this machine", where, " or ".join(BF16_ISAS),
                setting)
    return True


if __name__ == "__main__":
    print(measure().line())
