"""OpenDriveVLA speed: forward+backward time per sample, tokens per trajectory per encoding, and the latency budget
of one plan per encoding.

Synthetic batches shaped like model/batch.py (random images, plausible ego motion, a few boxes and map lines) for
the chosen preset (``--model tiny`` by default; ``--model 0.5b --device cuda --bf16`` where a GPU is present; a preset
without ``model.llm.path`` runs random weights with the offline tokenizer). Tokens per trajectory are counted with the
preset's tokenizer on random trajectories, for every trajectory encoding in plain text and with compact number
tokens (``action``: one token per step, whatever the codebook).

**Latency budget** (``--encodings``; default absolute, absolute+compact, residual+compact, action): one plan (batch 1)
split into vision encoder (``perceive``), prompt assembly (chat text, tokenisation, embedding splice), prefill (the
LLM over the prompt, KV cache filled), decode steps (constrained logits processor, greedy pick, one cached forward
each; their count and the time per step) and parsing (detokenise, decode the trajectory). The loop is the one
``generate`` runs, written out so each part can be timed (``split`` total); ``generate`` is the library call for
comparison. Random weights: the number of steps of an untrained model is the grammar's (the shortest valid answer
is what a trained model writes as well). ``action`` needs a codebook: ``--codebook FILE``, or one fitted (K-disk) on
the bench's own random trajectories. Nothing is asserted.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from odvla.model.constants import CAMERAS

if TYPE_CHECKING:
    from odvla.model.config import VisionConfig


def add_args(p) -> None:
    from odvla.platform.config.args import add_config_args

    add_config_args(p, model="tiny", stage=None)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed forward/backward and generate calls (after 1 warm-up)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: model.text.max_answer_tokens")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 weights (GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--trajectories", type=int, default=200, help="random trajectories for the token counts")
    p.add_argument("--skip-train", action="store_true", help="skip the forward+backward timings")
    p.add_argument("--skip-generate", action="store_true",
                   help="time the split plan only, not the library generate call beside it (halves a slow run)")
    p.add_argument("--encodings", default=",".join(LATENCY_ENCODINGS),
                   help="plans to time, comma-separated ENCODING[+compact] (default: %(default)s; '' to skip)")
    p.add_argument("--codebook", default=None, metavar="FILE",
                   help="action codebook (default: fitted on random trajectories, model.text.action_codebook_size)")


LATENCY_ENCODINGS = ("absolute", "absolute+compact", "residual+compact", "action")
PLAN_PARTS = ("vision", "prompt", "prefill", "decode", "parse")


def synthetic_batch(vision: VisionConfig, B: int = 2, seed: int = 0, tasks=None) -> dict:
    """A batch of model/batch.py sized for ``vision`` (``model.vision``: image size, map points): random images, six
    cameras around the ego, straight-ish motion, 3 boxes, 2 map lines. Ego frame, metres."""
    g = torch.Generator().manual_seed(seed)
    v = vision
    tasks = tasks or ["planning"] * B
    speed = 2 + torch.rand(B, generator=g) * 8
    steps = torch.arange(1, 7, dtype=torch.float32) * 0.5
    curve = torch.randn(B, 1, generator=g) * 0.4
    fut = torch.stack([speed[:, None] * steps, curve * steps ** 2], -1)
    past = torch.stack([-speed[:, None] * steps[:4].flip(0), torch.zeros(B, 4)], -1)
    K = torch.tensor([[v.image_width * 0.6, 0, v.image_width / 2], [0, v.image_width * 0.6, v.image_height / 2],
                      [0, 0, 1]])
    cam = torch.tensor([[0.0, 0, 1, 1.5], [-1, 0, 0, 0], [0, -1, 0, 1.6], [0, 0, 0, 1]])  # optical z -> ego x
    s2e = []
    for yaw in (0.0, -0.95, 0.95, np.pi, 2.2, -2.2):
        c, s = float(np.cos(yaw)), float(np.sin(yaw))
        s2e.append(torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ cam)
    Na, Nm, P = 3, 2, v.map_points
    boxes = torch.zeros(B, Na, 9)
    boxes[..., :2] = torch.rand(B, Na, 2, generator=g) * 30 - 15
    boxes[..., 3:6] = torch.tensor([1.9, 4.5, 1.6])
    line = torch.linspace(-20, 20, P)
    map_pts = torch.stack([line.expand(B, Nm, P), torch.tensor([-3.5, 3.5]).view(1, Nm, 1).expand(B, Nm, P)], -1)
    z = torch.zeros(B)
    return {
        "images": torch.randn(B, len(CAMERAS), 3, v.image_height, v.image_width, generator=g),
        "intrinsics": K.expand(B, 6, 3, 3).clone(), "sensor2ego": torch.stack(s2e).expand(B, 6, 4, 4).clone(),
        "ego_state": torch.stack([speed, z, z, z, z, speed, z], -1),
        "command": torch.full((B,), 2, dtype=torch.long), "past_traj": past, "past_mask": torch.ones(B, 4),
        "future_traj": fut, "future_mask": torch.ones(B, 6),
        "gt_boxes": boxes, "gt_labels": torch.zeros(B, Na, dtype=torch.long),
        "gt_agent_future": boxes[:, :, None, :2] + torch.linspace(0.5, 3, 6).view(1, 1, 6, 1),
        "gt_agent_future_mask": torch.ones(B, Na, 6), "gt_map_pts": map_pts,
        "gt_map_labels": torch.tensor([0, 1]).expand(B, Nm).clone(), "frame_index": torch.zeros(B, dtype=torch.long),
        "sample_token": [f"sample{seed}_{i}" for i in range(B)], "scene_token": [f"scene{i}" for i in range(B)],
        "task": tasks, "question": ["" if t == "planning" else "How many cars are there?" for t in tasks],
        "answer": ["" if t == "planning" else "There are 3 cars." for t in tasks],
    }


def tokens_per_trajectory(model_cfg, n: int = 200, seed: int = 0, codebook=None) -> dict:
    """Tokens of one answer trajectory (markers included) with the preset's own vocabulary (Qwen2.5's for the real
    presets), per trajectory encoding, in plain text and with compact number tokens (``codebook``: the action
    codebook file; default ``model.text.action_codebook`` or :func:`bench_codebook`):
    ``{(encoding, compact): (mean, min, max)}``."""
    import copy

    from odvla.model.tokenizer import build_tokenizer
    from odvla.model.traj_codec import ENCODINGS, TrajectoryCodec

    rng = np.random.default_rng(seed)
    trajs = [np.cumsum(rng.normal([2.5, 0.0], [1.5, 0.4], (6, 2)), 0) for _ in range(n)]
    # the ego state the residual encodings measure from: the velocity of the first step
    egos = [np.array([t[0, 0] / 0.5, t[0, 1] / 0.5, 0, 0, 0, np.hypot(*t[0]) / 0.5, 0]) for t in trajs]
    out = {}
    for compact in (False, True):
        cfg = copy.deepcopy(model_cfg)
        cfg.text.compact_tokens = compact
        tok = build_tokenizer(cfg)
        for enc in ENCODINGS:
            if enc == "action" and compact:
                continue  # compact number tokens do not apply to action tokens
            cfg.text.traj_encoding = enc
            if enc == "action":
                cfg.text.action_codebook = str(codebook or cfg.text.action_codebook or bench_codebook(cfg))
                tok = build_tokenizer(cfg)  # the vocabulary gains the action tokens
            codec = TrajectoryCodec(cfg.text)
            counts = [len(tok(codec.encode(t, e), add_special_tokens=False)["input_ids"]) for t, e in zip(trajs, egos)]
            out[(enc, compact)] = (float(np.mean(counts)), int(np.min(counts)), int(np.max(counts)))
    return out


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def run(args) -> int:
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config.args import config_from_args

    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    mcfg = cfg.model
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    codebook = args.codebook or mcfg.text.action_codebook or bench_codebook(mcfg)
    if mcfg.text.traj_encoding == "action":
        mcfg.text.action_codebook = str(codebook)
    tpt = tokens_per_trajectory(mcfg, args.trajectories, codebook=codebook)
    print(f"bench model: preset {mcfg.preset}, batch {args.batch_size}, device {dev}, "
          f"{'bf16' if args.bf16 else 'fp32'}, torch threads {torch.get_num_threads()}")
    vocab = mcfg.llm.path or mcfg.llm.tokenizer
    print(f"tokens per trajectory ({args.trajectories} random, markers included, vocabulary {vocab}):")
    for (enc, compact), (mean, lo, hi) in tpt.items():
        print(f"  {enc:<9} {'compact tokens' if compact else 'text':<15} {mean:6.1f} (min {lo}, max {hi})")
    if not args.skip_train:
        train_timings(mcfg, args, dev, sync)
    encodings = [e for e in args.encodings.split(",") if e.strip()]
    if encodings:
        print(f"latency budget of one plan (batch 1, {args.steps} plans after 1 warm-up, median ms):")
        print(f"  {'encoding':<18} {'vision':>8} {'prompt':>8} {'prefill':>8} {'decode':>8} {'steps':>6} "
              f"{'ms/step':>8} {'parse':>7} {'split':>8} {'generate':>9}  parsed")
    for spec in encodings:
        cfg = encoding_config(mcfg, spec.strip(), codebook)
        m = OpenDriveVLA(cfg).to(dev)
        if args.bf16:
            m = m.to(torch.bfloat16)
        r = plan_latency(m, dev, args.steps, args.max_new_tokens, sync, with_generate=not args.skip_generate)
        print(f"  {spec:<18} {r['vision']:8.1f} {r['prompt']:8.1f} {r['prefill']:8.1f} {r['decode']:8.1f} "
              f"{r['steps']:6.0f} {r['ms_per_step']:8.2f} {r['parse']:7.2f} {r['split']:8.1f} {r['generate']:9.1f}"
              f"  {100 * r['parsed']:.0f} %")
        del m
    return 0


def train_timings(mcfg, args, dev, sync) -> None:
    """Forward+backward time per sample at stage2 (projectors + LLM) and stage3 (everything)."""
    from odvla.model.vla import OpenDriveVLA

    model = OpenDriveVLA(mcfg).to(dev)
    if args.bf16:
        model = model.to(torch.bfloat16)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"(LLM {sum(p.numel() for p in model.llm.parameters()) / 1e6:.2f} M)")
    B = args.batch_size
    batch = _to(synthetic_batch(mcfg.vision, B, seed=0), dev)
    for stage, parts in (("stage2", ["projectors", "llm"]), ("stage3", ["projectors", "llm", "vision"])):
        model.set_trainable(parts)
        model.train()
        times = []
        for i in range(args.steps + 1):
            sync()
            t0 = time.perf_counter()
            out = model(batch)
            sum(out[k] for k in ("lm", "det", "map", "motion")).backward()
            sync()
            if i:
                times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        print(f"forward+backward {stage}: {1e3 * np.median(times) / B:.1f} ms/sample (median of {args.steps}, "
              f"lm {out['lm'].item():.3f}, {int(out['answer_tokens'])} answer tokens)")


def bench_codebook(model_cfg, n: int = 1500, seed: int = 0):
    """A codebook of ``model.text.action_codebook_size`` entries fitted (K-disk) on random bicycle-model
    trajectories (speed 0..15 m/s, |accel| <= 3 m/s^2, |yaw rate| <= 0.4 rad/s): the bench's own, for timing."""
    import tempfile

    from odvla.model.action_codebook import ActionCodebook, fit_kdisk, training_segments

    rng = np.random.default_rng(seed)
    futs, pasts = [], []
    for _ in range(n):
        v, h, x, y = rng.uniform(0, 15), 0.0, 0.0, 0.0
        a, w = rng.uniform(-3, 3), rng.uniform(-0.4, 0.4)
        pts = []
        for _ in range(6):
            for _ in range(5):  # 0.1 s integration steps
                v = max(0.0, v + 0.1 * a)
                h += 0.1 * w
                x, y = x + 0.1 * v * np.cos(h), y + 0.1 * v * np.sin(h)
            pts.append((x, y))
        futs.append(pts)
        pasts.append(-np.asarray(pts[:4])[::-1])
    motions = training_segments(np.asarray(futs), np.ones((n, 6)), np.asarray(pasts), np.ones((n, 4)))
    cb = ActionCodebook(fit_kdisk(motions, int(model_cfg.text.action_codebook_size), seed=seed))
    return cb.save(Path(tempfile.mkdtemp(prefix="odvla-bench-codebook-")) / "action_codebook.json")


def encoding_config(model_cfg, spec: str, codebook=None):
    """``model_cfg`` for one ``ENCODING[+compact]`` of ``--encodings`` (a copy)."""
    import copy

    from odvla.model.traj_codec import ENCODINGS

    enc, _, flag = spec.partition("+")
    if enc not in ENCODINGS or flag not in ("", "compact"):
        raise ValueError(f"--encodings: {spec!r} is not ENCODING[+compact] with ENCODING one of {ENCODINGS}")
    cfg = copy.deepcopy(model_cfg)
    cfg.text.traj_encoding = enc
    cfg.text.compact_tokens = flag == "compact"
    if cfg.text.number_choice == "median" and not cfg.text.compact_tokens:
        cfg.text.number_choice = "argmax"
    if enc == "action":
        cfg.text.compact_tokens = False
        cfg.text.action_codebook = str(codebook or cfg.text.action_codebook or bench_codebook(cfg))
    return cfg


@torch.no_grad()
def plan_latency(model, dev, plans: int = 5, max_new_tokens=None, sync=lambda: None,
                 with_generate: bool = True) -> dict:
    """Median ms of each part of one plan (``PLAN_PARTS``, see the module docstring), decode ``steps``,
    ``ms_per_step``, the ``split`` total, the library ``generate`` time (nan without ``with_generate``), and the
    share of plans ``parsed``."""
    from odvla.model.constrained_decoding import TrajectoryLogitsProcessor

    model.eval()
    eos = model.tokenizer.eos_token_id
    max_new = int(max_new_tokens or model.config.text.max_answer_tokens)
    rows = {k: [] for k in PLAN_PARTS + ("steps", "generate", "parsed")}
    for i in range(plans + 1):
        batch = _to(synthetic_batch(model.config.vision, 1, seed=200 + i), dev)
        t = [time.perf_counter()]
        vis = model.perceive(batch, None, compute_losses=False)
        sync()
        t.append(time.perf_counter())
        tb = model.chat.encode(batch, with_answers=False, device=model._device())
        emb = model._embed(batch, tb.input_ids, vis)
        sync()
        t.append(time.perf_counter())
        out = model.llm(inputs_embeds=emb, attention_mask=tb.attention_mask, use_cache=True)
        logits, past, mask = out.logits[:, -1], out.past_key_values, tb.attention_mask
        sync()
        t.append(time.perf_counter())
        proc = TrajectoryLogitsProcessor(model.grammar, list(batch["task"]), eos, max_new,
                                         number_choice=model.config.text.number_choice)
        gen = torch.zeros((1, 0), dtype=torch.long, device=dev)
        for _ in range(max_new):
            tok = proc(gen, logits.float()).argmax(-1, keepdim=True)
            gen = torch.cat([gen, tok], 1)
            if int(tok) == eos:
                break
            mask = torch.cat([mask, mask.new_ones((1, 1))], 1)
            out = model.llm(input_ids=tok, attention_mask=mask, past_key_values=past, use_cache=True)
            logits, past = out.logits[:, -1], out.past_key_values
        sync()
        t.append(time.perf_counter())
        ids = gen[0].tolist()
        text = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        try:
            model.codec.decode(text, batch["ego_state"][0].float().cpu().numpy())
            ok = True
        except ValueError:
            ok = False
        t.append(time.perf_counter())
        gen_ms = float("nan")
        if with_generate:
            t0 = time.perf_counter()
            model.generate(batch, max_new_tokens=max_new)
            sync()
            gen_ms = 1e3 * (time.perf_counter() - t0)
        if i:  # the first plan warms up
            for k, a, b in zip(PLAN_PARTS, t[:-1], t[1:]):
                rows[k].append(1e3 * (b - a))
            rows["steps"].append(len(ids))
            rows["generate"].append(gen_ms)
            rows["parsed"].append(ok)
    r = {k: float(np.median(v)) for k, v in rows.items() if k != "parsed"}
    r["ms_per_step"] = r["decode"] / max(r["steps"], 1)
    r["split"] = sum(r[k] for k in PLAN_PARTS)
    r["parsed"] = float(np.mean(rows["parsed"]))
    return r
