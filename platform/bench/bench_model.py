"""OpenDriveVLA speed: forward+backward and generate time per sample, and tokens per trajectory in both encodings.

Synthetic batches shaped like model/batch.py (random images, plausible ego motion, a few boxes and map lines) for
the chosen preset (``--model tiny`` by default; ``--model 0.5b --device cuda --bf16`` where a GPU is present; a preset
without ``model.llm.path`` runs random weights with the offline tokenizer). Tokens per trajectory are counted with the
preset's tokenizer on random trajectories, released text form vs compact number tokens. Nothing is asserted.
"""
from __future__ import annotations

import time
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


def tokens_per_trajectory(model_cfg, n: int = 200, seed: int = 0) -> dict:
    """Tokens of one answer trajectory (markers included) with the preset's own vocabulary (Qwen2.5's for the real
    presets), per trajectory encoding, in plain text and with compact number tokens:
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
            cfg.text.traj_encoding = enc
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
    tpt = tokens_per_trajectory(mcfg, args.trajectories)
    print(f"bench model: preset {mcfg.preset}, batch {args.batch_size}, device {dev}, "
          f"{'bf16' if args.bf16 else 'fp32'}, torch threads {torch.get_num_threads()}")
    vocab = mcfg.llm.path or mcfg.llm.tokenizer
    print(f"tokens per trajectory ({args.trajectories} random, markers included, vocabulary {vocab}):")
    for (enc, compact), (mean, lo, hi) in tpt.items():
        print(f"  {enc:<9} {'compact tokens' if compact else 'text':<15} {mean:6.1f} (min {lo}, max {hi})")
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
    model.eval()
    import copy

    ccfg = copy.deepcopy(mcfg)
    ccfg.text.compact_tokens = True
    compact = OpenDriveVLA(ccfg).to(dev)
    if args.bf16:
        compact = compact.to(torch.bfloat16)
    compact.eval()
    for compact_label, m in (("released text", model), ("compact tokens", compact)):
        times, ntok, ok = [], [], []
        for i in range(args.steps + 1):
            sync()
            t0 = time.perf_counter()
            g = m.generate(_to(synthetic_batch(mcfg.vision, B, seed=100 + i), dev), max_new_tokens=args.max_new_tokens)
            sync()
            if i:
                times.append(time.perf_counter() - t0)
                ntok += g.num_generated_tokens
                ok += g.parsed
        per = np.median(times) / B
        print(f"generate (greedy, constrained, {compact_label}): {1e3 * per:.1f} ms/sample, "
              f"{np.mean(ntok):.1f} tokens/sample, {1e3 * np.median(times) / max(np.mean(ntok), 1):.2f} ms/step, "
              f"parsed {100 * np.mean(ok):.0f} %")
    return 0
