"""``make gpu-check`` on a machine without CUDA fails at once with a message that says so (exit status 2), before
starting Ray or writing any data; the MFU arithmetic's peak table picks the GPU by name."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_fails_clearly_without_cuda():
    """The CPU-only path, on any machine: the check runs in a subprocess whose CUDA devices are hidden, so a machine
    with a GPU runs this test too (and ``make gpu-check`` itself there)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu" / "gpu_check.py"), "--steps", "2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gpu-check: FAILED: make gpu-check needs a CUDA GPU" in proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stderr
    assert "odvla.train" not in proc.stdout + proc.stderr  # nothing was started


def test_peak_by_gpu_name():
    sys.path.insert(0, str(ROOT / "tests" / "gpu"))
    try:
        from gpu_check import peak_tflops
    finally:
        sys.path.pop(0)
    assert peak_tflops("NVIDIA H100 80GB HBM3", 0) == 989.0
    assert peak_tflops("NVIDIA H200", 0) == 989.0
    assert peak_tflops("Unknown GPU", 0) == 0.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == 500.0
