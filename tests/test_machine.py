"""The machine's speed (``odvla.platform.machine``): bf16 detection honours oneDNN's ISA cap, the CPU-bf16 warning
comes once and names the setting, and the slowdown never shortens a budget."""
from __future__ import annotations

import logging

import pytest

from odvla.platform import machine


def test_onednn_cap_below_avx512_bf16_means_no_native_bf16(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine.native_bf16() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    has_flags = bool(set(machine.BF16_ISAS) & machine.cpu_flags())
    assert machine.native_bf16() is has_flags  # the cap allows bf16: the CPU's flags decide


def test_cpu_bf16_warning_names_the_setting_once(monkeypatch, caplog):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a CPU without bf16 instructions, whatever this one is
    monkeypatch.setattr(machine, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="odvla.platform.machine"):
        assert machine.warn_cpu_bf16("stage3 (model 0.5b)", "train.bf16=false") is True
        assert machine.warn_cpu_bf16("stage3 (model 0.5b)", "train.bf16=false") is False
    records = [r for r in caplog.records if r.name == "odvla.platform.machine"]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "stage3 (model 0.5b)" in msg and "train.bf16=false" in msg and "avx512_bf16" in msg


def test_no_warning_where_bf16_is_native(monkeypatch, caplog):
    monkeypatch.setattr(machine, "native_bf16", lambda: True)
    monkeypatch.setattr(machine, "_warned", set())
    with caplog.at_level(logging.WARNING):
        assert machine.warn_cpu_bf16("x", "train.bf16=false") is False
    assert not caplog.records


def test_measure_and_slowdown():
    speed = machine.measure(seconds=0.05)
    assert speed.f32_gflops > 0 and speed.bf16_gflops > 0 and speed.threads >= 1
    assert "GFLOP/s" in speed.line()
    slow = machine.MachineSpeed(f32_gflops=25.0, bf16_gflops=0.3, threads=2, native_bf16=False)
    fast = machine.MachineSpeed(f32_gflops=400.0, bf16_gflops=800.0, threads=2, native_bf16=True)
    assert slow.slowdown(50.0) == pytest.approx(2.0) and slow.slowdown(150.0) == pytest.approx(6.0)
    assert fast.slowdown(150.0) == 1.0  # a faster machine never shortens a limit
