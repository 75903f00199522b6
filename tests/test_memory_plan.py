"""The memory plan (``odvla bench memory``): DeepSpeed's estimators per ZeRO stage, activations measured with autograd's
saved-tensor hooks, the presets' own ZeRO stages and GPU counts (tune/space.py, cluster.yaml) fit an 80 GB H100, and a
plan that cannot fit is refused naming the keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from odvla.platform.bench.bench_memory import (GiB, MemoryPlanError, check_fits, measure_llm_activations,
                                               model_states_bytes, plan)
from odvla.platform.config import load_config

ROOT = Path(__file__).resolve().parents[1]
GENEROUS = {"llm": {"layer": 1.0 * GiB, "layer_checkpointed": 8 << 20, "logits": 0.6 * GiB}, "vision": 7.0 * GiB}
"""Activations above what ``odvla bench memory`` measured for every real preset at 512 tokens (README, "Real sizes"),
so the fit checks below hold with a margin."""


def test_model_states_are_deepspeeds_estimates():
    P, largest, N = 1_000_000_000, 150_000_000, 8
    assert model_states_bytes(P, largest, 2, N) == pytest.approx(2 * P + 18 * P / N, abs=1)
    assert model_states_bytes(P, largest, 3, N) == pytest.approx(4 * largest + 18 * P / N, abs=1)
    assert model_states_bytes(P, largest, 1, N) == pytest.approx(4 * P + 16 * P / N, abs=1)  # 16-bit grads whole
    assert model_states_bytes(P, largest, 1, 1) == model_states_bytes(P, largest, 2, 1)  # one GPU: same thing
    with pytest.raises(ValueError, match="train.zero_stage"):
        model_states_bytes(P, largest, 4, N)


def test_llm_activations_measured_per_layer():
    llm = load_config(model="tiny").model.llm
    per = measure_llm_activations(llm, seq_len=64, measure_len=32)
    # a checkpointed layer keeps only its float32 input [1, L, H]
    assert per["layer_checkpointed"] == 64 * llm.hidden_size * 4
    assert per["layer"] > 10 * per["layer_checkpointed"]  # a whole layer keeps far more (norms, q/k/v, MLP)
    assert per["logits"] == 2 * 4 * 64 * 152064  # vocab_size 0 (tiny) plans with Qwen2.5-7B's 152,064 rows


@pytest.mark.parametrize("preset", ["0.5b", "3b", "7b"])
def test_presets_fit_their_gpus(preset):
    from odvla.tune.space import TRIAL_GPUS

    gpus_per_node = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]["gpu_p5"][
        "resources"]["GPU"]
    cfg = load_config(model=preset, stage="stage3")
    gpus = TRIAL_GPUS[preset][0]
    assert gpus <= gpus_per_node  # a trial's GPUs fit one p5 node
    row = plan(cfg.model, cfg.data.batch_size, gpus, seq_len=512, stages=(cfg.train.zero_stage,), measured=GENEROUS)[0]
    assert row.fits, (row.total / GiB, row)
    check_fits(row)


def test_a_plan_that_cannot_fit_names_the_keys():
    # 7.7 B params on 8 GPUs at 8 samples per GPU: ZeRO-1 keeps the 16-bit weights and gradients whole (31 GB) beside
    # the activations; ZeRO-3 splits them
    cfg = load_config(model="7b", stage="stage3", overrides=["data.batch_size=8"])
    rows = {r.zero: r for r in plan(cfg.model, cfg.data.batch_size, 8, seq_len=512, measured=GENEROUS)}
    assert rows[3].fits and not rows[1].fits
    assert rows[1].total > rows[2].total > rows[3].total
    with pytest.raises(MemoryPlanError, match=r"train\.zero_stage=1 on train\.num_workers=8 .*data\.batch_size=8"):
        check_fits(rows[1])
    seven_b = load_config(model="7b", stage="stage3")
    one_gpu = plan(seven_b.model, seven_b.data.batch_size, 1, seq_len=512, stages=(3,), measured=GENEROUS)[0]
    with pytest.raises(MemoryPlanError, match=r"'7b' does not fit a 80 GB GPU: train\.zero_stage=3"):
        check_fits(one_gpu)  # 18 bytes per parameter of model states alone: 139 GB
