"""OpenDriveVLA on the tiny preset (CPU): losses, trainable sets per stage, overfitting, constrained generation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from odvla.model.config import ModelConfig
from odvla.model.scene_state import SceneState
from odvla.model.traj_codec import TrajectoryCodec
from odvla.model.vision_encoder import VisionEncoder
from odvla.model.vla import OpenDriveVLA
from odvla.platform.bench.bench_model import synthetic_batch as make_batch

LOSSES = ("lm", "det", "map", "motion")


def tiny_cfg(**text) -> ModelConfig:
    cfg = ModelConfig()
    cfg.vision.image_height, cfg.vision.image_width = 32, 64
    for k, v in text.items():
        setattr(cfg.text, k, v)
    return cfg


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(one_torch_thread):
    torch.manual_seed(0)
    return OpenDriveVLA(tiny_cfg())


def test_composition_and_forward(model):
    assert isinstance(model.vision, VisionEncoder)
    assert model.config.llm.hidden_size == model.llm.config.hidden_size
    assert model.llm.get_input_embeddings().num_embeddings >= len(model.tokenizer)
    model.set_trainable(STAGE_PARTS["stage3"])
    batch = make_batch(model.config.vision, 2, tasks=["planning", "qa"])
    out = model(batch)
    assert set(out) == set(LOSSES) | {"answer_tokens", "llm_tokens"}
    for k in LOSSES:
        assert out[k].dim() == 0 and torch.isfinite(out[k]) and out[k].dtype == torch.float32
    tok = model.tokenizer
    n_plan = len(tok(TrajectoryCodec(model.config.text).encode(batch["future_traj"][0].numpy()) + "<|im_end|>",
                     add_special_tokens=False)["input_ids"])
    n_qa = len(tok("There are 3 cars.<|im_end|>", add_special_tokens=False)["input_ids"])
    assert int(out["answer_tokens"]) == n_plan + n_qa
    prompts = [len(tok(model.chat.prompt_text(batch, b), add_special_tokens=False)["input_ids"]) for b in range(2)]
    assert int(out["llm_tokens"]) == sum(prompts) + n_plan + n_qa  # every input token of both rows, no padding
    assert out["lm"].item() > 3.0  # random init: about log(vocab)


def test_visual_tokens_reach_the_llm(model):
    """Changing only the images changes the LM loss (the projected tokens are spliced in), the text being equal."""
    model.set_trainable(STAGE_PARTS["stage3"])
    model.eval()
    b1 = make_batch(model.config.vision, 1, seed=3)
    b2 = dict(b1, images=b1["images"] * 0 + 1.0)
    with torch.no_grad():
        assert abs(model(b1)["lm"].item() - model(b2)["lm"].item()) > 1e-6
    bad = dict(b1, question=["What is <SCENE>?"], task=["qa"], answer=["x"])
    with pytest.raises(ValueError, match="reserved placeholder"):
        model(bad)


STAGE_PARTS = {"stage1": ["projectors"], "stage2": ["projectors", "llm"], "stage2_5": ["projectors", "llm"],
               "stage3": ["projectors", "llm", "vision"]}
"""The shipped stage presets' ``stage.trainable`` (checked against the YAML files below)."""


def test_stage_presets_name_these_parts():
    from odvla.platform.config import load_config

    for stage, parts in STAGE_PARTS.items():
        assert load_config(stage=stage).stage.trainable == parts


@pytest.mark.parametrize("stage, heads", [("stage1", False), ("stage2", False), ("stage2_5", False),
                                          ("stage2_5", True), ("stage3", False)])
def test_gradients_reach_exactly_the_stage_set(model, stage, heads):
    names = set(model.set_trainable(STAGE_PARTS[stage] + (["agent_heads"] if heads else [])))
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(make_batch(model.config.vision, 2, seed=1))
    sum(out[k] for k in LOSSES).backward()
    params = dict(model.named_parameters())
    with_grad = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {n for n, p in params.items() if p.requires_grad}
    assert with_grad <= names
    proj = {n for n in params if n.startswith("projectors.")}
    llm = {n for n in params if n.startswith("llm.")}
    vision = {n for n in params if n.startswith("vision.")}
    heads_set = {n for n, p in model.vision.named_parameters(prefix="vision")
                 if any(p is q for q in model.vision.agent_motion_parameters())}
    assert proj <= with_grad  # projectors train in every stage
    if stage == "stage1":
        assert names == proj
    elif stage == "stage2" or (stage == "stage2_5" and not heads):
        assert names == proj | llm and llm <= with_grad
    elif stage == "stage2_5":
        assert names == proj | llm | heads_set and heads_set & with_grad
    else:
        assert names == set(params)
        assert llm <= with_grad
        # the whole pipeline trains: backbone, BEV, query decoders all receive gradients
        for part in ("vision.backbone.", "vision.bev_encoder.", "vision.scene_sampler.", "vision.agent_queries.",
                     "vision.map_queries."):
            assert any(n.startswith(part) for n in with_grad), part
        assert len(with_grad & vision) > 0.8 * len(vision)
    if stage != "stage3":
        assert not model.vision.training  # frozen BatchNorm statistics
    model.zero_grad(set_to_none=True)


def test_generate_constrained_parses_and_returns_states(model):
    model.set_trainable(STAGE_PARTS["stage3"])
    batch = make_batch(model.config.vision, 3, seed=2, tasks=["planning", "qa", "planning"])
    out = model.generate(batch, max_new_tokens=120)
    assert len(out.answers) == 3 and out.trajectories.shape == (3, 6, 2)
    assert out.parsed[0] and out.parsed[2] and out.errors[0] is None
    assert np.isfinite(out.trajectories[[0, 2]]).all()
    np.testing.assert_allclose(out.trajectories[0], TrajectoryCodec(model.config.text).decode(out.answers[0]))
    assert all(isinstance(s, SceneState) for s in out.states) and len(out.states) == 3
    assert all(1 <= n <= 120 for n in out.num_generated_tokens)
    # the plan's parts: one logits call per decode step of the batch's longest answer, every part measured
    t = out.timings
    assert t["decode_steps"] == max(out.num_generated_tokens)
    assert all(t[k] > 0 for k in ("vision_ms", "prompt_ms", "prefill_ms", "decode_ms", "parse_ms")), t
    # the next keyframe of the same scenes continues from the returned states
    nxt = make_batch(model.config.vision, 3, seed=3, tasks=["planning"] * 3)
    nxt["frame_index"] = torch.ones(3, dtype=torch.long)
    nxt["scene_token"] = batch["scene_token"]
    model.train()  # generate runs in eval mode and restores the caller's mode
    out2 = model.generate(nxt, states=out.states, max_new_tokens=120)
    assert all(out2.parsed) and [s.frame_index for s in out2.states] == [1, 1, 1]
    assert model.training is True and model.llm.training is True
    model.eval()
    model.generate(nxt, states=out.states, max_new_tokens=120)
    assert model.training is False


@pytest.mark.parametrize("text", [dict(), dict(traj_encoding="delta"), dict(compact_tokens=True)])
def test_constrained_decoding_parses_every_random_input(text):
    """Random-init tiny model, many random inputs: every constrained trajectory parses; unconstrained ones do not."""
    torch.manual_seed(1)
    m = OpenDriveVLA(tiny_cfg(**text))
    parsed, free = [], []
    for seed in range(4):
        batch = make_batch(m.config.vision, 6, seed=10 + seed)
        parsed += m.generate(batch).parsed
        if seed == 0:
            free += m.generate(batch, constrained=False, max_new_tokens=40).parsed
    assert len(parsed) == 24 and all(parsed)
    assert not all(free)


def test_ego_token_and_residual_answers():
    """text.ego_token: planning prompts hold one <EGO> whose embedding is the ego projector's output (QA prompts
    none), the projector trains from stage1 on; residual answers decode against each row's own ego velocity."""
    torch.manual_seed(0)
    cfg = tiny_cfg(ego_token=True, traj_encoding="residual", compact_tokens=True, number_choice="median")
    m = OpenDriveVLA(cfg)
    batch = make_batch(cfg.vision, 2, seed=4, tasks=["planning", "qa"])
    tb = m.chat.encode(batch, with_answers=True)
    assert (tb.input_ids == m.ego_token_id).sum(1).tolist() == [1, 0]
    m.eval()
    with torch.no_grad():
        emb = m._embed(batch, tb.input_ids, m.vision(batch, compute_losses=False))
        want = m.ego_projector.from_batch(batch)[0]
    torch.testing.assert_close(emb[0][tb.input_ids[0] == m.ego_token_id][0], want)
    names = set(m.set_trainable(STAGE_PARTS["stage1"]))
    assert {n for n in names if n.startswith("ego_projector.")} and all(
        n.startswith(("projectors.", "ego_projector.")) for n in names)
    m.train()
    sum(m(batch)[k] for k in LOSSES).backward()
    assert m.ego_projector.fc1.weight.grad.abs().sum() > 0
    out = m.generate(make_batch(cfg.vision, 2, seed=6, tasks=["planning", "planning"]))
    assert all(out.parsed)
    b2 = make_batch(cfg.vision, 2, seed=6, tasks=["planning", "planning"])
    for b in range(2):
        np.testing.assert_allclose(out.trajectories[b],
                                   m.codec.decode(out.answers[b], b2["ego_state"][b].numpy()))
    with pytest.raises(ValueError, match="'median' needs text.compact_tokens"):
        OpenDriveVLA(tiny_cfg(number_choice="median"))
    bad = dict(batch, question=["", "where is <EGO>?"], answer=["", "x"])
    with pytest.raises(ValueError, match="reserved placeholder <EGO>"):
        m(bad)


def test_overfit_one_batch():
    """A few hundred steps on one batch: the LM loss falls by a large factor and the greedy trajectory is the
    target within a few centimetres."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    m = OpenDriveVLA(cfg)
    batch = make_batch(cfg.vision, 2, seed=5)
    m.set_trainable(STAGE_PARTS["stage2"])
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = m(batch)["lm"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 20
    out = m.generate(batch)
    assert all(out.parsed), out.answers
    err = np.linalg.norm(out.trajectories - batch["future_traj"].numpy(), axis=-1)
    assert err.max() < 0.05, (out.answers, batch["future_traj"])


def test_gradient_checkpointing_same_loss_and_grads():
    cfgs = [tiny_cfg(), tiny_cfg()]
    cfgs[1].gradient_checkpointing = True
    batch = make_batch(cfgs[0].vision, 2, seed=7)
    grads = []
    for cfg in cfgs:
        torch.manual_seed(0)
        m = OpenDriveVLA(cfg)
        m.set_trainable(STAGE_PARTS["stage2"])
        m.train()
        loss = m(batch)["lm"]
        loss.backward()
        grads.append((loss.item(), m.llm.model.layers[0].mlp.up_proj.weight.grad.clone()))
    assert cfgs[1].gradient_checkpointing and m.llm.model.gradient_checkpointing
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_bf16_forward_and_generate():
    torch.manual_seed(0)
    m = OpenDriveVLA(tiny_cfg()).to(torch.bfloat16)
    m.set_trainable(STAGE_PARTS["stage2"])
    batch = make_batch(m.config.vision, 2, seed=8)
    out = m(batch)
    assert torch.isfinite(out["lm"]) and out["lm"].dtype == torch.float32
    out["lm"].backward()
    assert m.llm.model.layers[0].mlp.up_proj.weight.grad.dtype == torch.bfloat16
    gen = m.generate(batch, max_new_tokens=100)
    assert all(gen.parsed)


def test_llm_and_tokenizer_from_local_hf_folder(tmp_path):
    """``llm.path``: weights and tokenizer come from a local HF folder (as Qwen2.5-Instruct would); the model's tokens
    are added and the embedding matrix grows to hold them."""
    from transformers import Qwen2ForCausalLM

    from odvla.model.llm import qwen2_config
    from odvla.model.tokenizer import train_offline_bpe

    cfg = tiny_cfg()
    base = train_offline_bpe(cfg.llm.tokenizer_vocab_size)
    hf_cfg = qwen2_config(cfg, base)
    hf_cfg.vocab_size = len(base)  # no spare rows, as a released checkpoint whose vocab is full
    torch.manual_seed(0)
    Qwen2ForCausalLM(hf_cfg).save_pretrained(tmp_path / "qwen")
    base.save_pretrained(tmp_path / "qwen")
    cfg.llm.path = str(tmp_path / "qwen")
    m = OpenDriveVLA(cfg)
    assert len(m.tokenizer) > len(base)
    assert m.llm.get_input_embeddings().num_embeddings >= len(m.tokenizer)
    ref = Qwen2ForCausalLM.from_pretrained(tmp_path / "qwen")
    torch.testing.assert_close(m.llm.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)
    m.set_trainable(STAGE_PARTS["stage2"])
    batch = make_batch(cfg.vision, 2, seed=9)
    assert torch.isfinite(m(batch)["lm"])
    assert all(m.generate(batch, max_new_tokens=100).parsed)


def test_unknown_part_errors(model):
    with pytest.raises(ValueError, match="unknown trainable part.*'stage4'"):
        model.set_trainable(["projectors", "stage4"])
    with pytest.raises(ValueError, match="unknown trainable part"):
        model.set_trainable([])
