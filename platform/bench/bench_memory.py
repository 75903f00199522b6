"""Memory plan: bytes per GPU of each model preset x ZeRO stage (1/2/3) against an 80 GB H100.

    odvla bench memory [--presets 0.5b,3b,7b] [--gpus 8] [--gpu-gb 80] [--seq-len 512] [--check --model 7b --set ...]

Per GPU = model states + activations x micro-batch (``data.batch_size``), against ``--gpu-gb`` x ``HEADROOM`` (the
rest is CUDA context, NCCL buffers and allocator fragmentation).

- Model states: DeepSpeed's own estimators, without offload (bf16 weights, AdamW in fp32, every parameter trained as
  in stage3). ZeRO-2: ``estimate_zero2_model_states_mem_needs`` = 2 P + 18 P / N bytes. ZeRO-3:
  ``estimate_zero3_model_states_mem_needs`` = 4 x largest layer + 18 P / N. ZeRO-1 has no DeepSpeed estimator:
  the ZeRO-2 figure with the 16-bit gradients whole on every GPU, 4 P + 16 P / N. P: parameters of the preset built on
  the meta device (``odvla config --params``); N: GPUs (``train.num_workers``).
- Activations per sample: the bytes autograd saves for backward (``saved_tensors_hooks``), measured on the CPU in
  float32 and halved for bf16. The LLM: one decoder layer at the preset's width on ``--seq-len`` tokens, without and
  with gradient checkpointing; N layers checkpointed keep each layer's input and recompute one layer at a time, so
  layers x checkpointed + one layer whole; plus the logits of the preset's vocabulary (float32 for the loss, twice:
  logits and their gradient). The vision encoder: its backbone on six images at 1/4 of the preset's height and width,
  scaled by the pixel count (16x).

``--check`` plans the one configuration of ``--model``/``--set`` and exits non-zero with a ``MemoryPlanError`` naming
the keys to change when it does not fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from odvla.model.constants import CAMERAS

GiB = 1024**3
HEADROOM = 0.9
"""Share of the GPU's memory a plan may use."""
H100_GB = 80.0


class MemoryPlanError(ValueError):
    """A configuration whose planned memory per GPU exceeds the GPU; the message names the keys to change."""


@dataclass
class PlanRow:
    preset: str
    zero: int
    gpus: int
    params: int
    model_states: float
    """Bytes per GPU of weights, gradients and optimiser states (DeepSpeed's estimators)."""
    activations: float
    """Bytes per GPU of activations for the micro-batch."""
    micro_batch: int
    gpu_bytes: float

    @property
    def total(self) -> float:
        return self.model_states + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= HEADROOM * self.gpu_bytes


def model_states_bytes(params: int, largest_layer_params: int, zero: int, gpus: int) -> float:
    """Bytes per GPU of model states at ``zero`` stage on ``gpus`` GPUs (no offload), DeepSpeed's estimators."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if zero == 3:
        return float(estimate_zero3_model_states_mem_needs(params, largest_layer_params, num_gpus_per_node=gpus,
                                                           cpu_offload=False)[1])
    zero2 = float(estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus, cpu_offload=False)[1])
    if zero == 2:
        return zero2
    if zero in (0, 1):  # the 16-bit gradients stay whole on every GPU: + 2 P - 2 P / N
        return zero2 + 2 * params - 2 * params / gpus
    raise ValueError(f"train.zero_stage: expected 0, 1, 2 or 3, got {zero}")


def _saved_bytes(fn, module) -> int:
    """Bytes autograd saves for backward while ``fn()`` runs its forward (each storage counted once), leaving out
    ``module``'s parameters (saved by reference: they are model states, not activations)."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict = {}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in weights:
                seen[ptr] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.backward()
    return sum(seen.values())


def measure_llm_activations(llm_cfg, seq_len: int, measure_len: int = 128) -> dict:
    """Float32 bytes saved per sample by one Qwen2 decoder layer of ``llm_cfg``'s width on ``seq_len`` tokens,
    measured on ``measure_len`` tokens (a 2-layer minus a 1-layer model) and scaled linearly (SDPA attention keeps
    no L x L matrix): ``layer`` (no checkpointing), ``layer_checkpointed`` (its input only), ``logits`` (logits and
    their gradient in float32 over the vocabulary, ``vocab_size`` rows)."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    n = min(measure_len, seq_len)

    def saved(layers: int, ckpt: bool) -> int:
        cfg = Qwen2Config(vocab_size=64, hidden_size=llm_cfg.hidden_size, intermediate_size=llm_cfg.intermediate_size,
                          num_hidden_layers=layers, num_attention_heads=llm_cfg.num_attention_heads,
                          num_key_value_heads=llm_cfg.num_key_value_heads, max_position_embeddings=max(n, 64),
                          use_cache=False)
        m = Qwen2Model(cfg)
        if ckpt and hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif ckpt:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
        emb = torch.randn(1, n, llm_cfg.hidden_size, requires_grad=True)  # [1, n, H]
        return _saved_bytes(lambda: m(inputs_embeds=emb).last_hidden_state.float().pow(2).mean(), m)

    per = {key: max(saved(2, ckpt) - saved(1, ckpt), 0) * seq_len / n
           for key, ckpt in (("layer", False), ("layer_checkpointed", True))}
    vocab = int(llm_cfg.vocab_size) or 152064
    per["logits"] = 2 * 4 * seq_len * vocab
    return per


def measure_backbone_activations(vision_cfg, scale: int = 4) -> int:
    """Float32 bytes the preset's backbone saves for six images at (height, width) / ``scale``, times ``scale``
    squared (conv activations grow with the pixel count)."""
    import torch
    import torchvision

    name = vision_cfg.backbone
    net = getattr(torchvision.models, name)(weights=None)
    trunk = torch.nn.Sequential(*list(net.children())[:-2]).train()
    h, w = max(vision_cfg.image_height // scale, 32), max(vision_cfg.image_width // scale, 32)
    x = torch.randn(len(CAMERAS), 3, h, w)
    saved = _saved_bytes(lambda: trunk(x).float().pow(2).mean(), trunk)
    return int(saved * (vision_cfg.image_height * vision_cfg.image_width) / (h * w))


def activation_bytes_per_sample(model_cfg, seq_len: int, measured: dict | None = None) -> float:
    """Bf16 bytes of activations per sample for ``model_cfg`` (see the module docstring); ``measured``: the output of
    the two measurements, reused across ZeRO stages."""
    m = measured or {"llm": measure_llm_activations(model_cfg.llm, seq_len),
                     "vision": measure_backbone_activations(model_cfg.vision)}
    llm = m["llm"]
    layers = int(model_cfg.llm.num_hidden_layers)
    if model_cfg.gradient_checkpointing:
        decoder = layers * llm["layer_checkpointed"] + llm["layer"]
    else:
        decoder = layers * llm["layer"]
    return 0.5 * (decoder + m["vision"]) + llm["logits"]  # logits stay float32 for the loss


def _largest_layer(model) -> int:
    return max((sum(p.numel() for p in mod.parameters(recurse=False)) for mod in model.modules()), default=0)


def preset_sizes(model_cfg) -> tuple[int, int]:
    """(parameters, parameters of the largest module: the embedding or LM head) built on the meta device."""
    import warnings

    import torch

    from odvla.model.vla import OpenDriveVLA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = OpenDriveVLA(model_cfg)
    return sum(p.numel() for p in model.parameters()), _largest_layer(model)


def plan(model_cfg, micro_batch: int, gpus: int, seq_len: int, gpu_gb: float = H100_GB, stages=(1, 2, 3),
         measured=None) -> list[PlanRow]:
    """Plan rows of the model ``model_cfg`` (``model``) at ``micro_batch`` samples per GPU (``data.batch_size``) at
    each ZeRO stage of ``stages`` on ``gpus`` GPUs of ``gpu_gb`` GB."""
    params, largest = preset_sizes(model_cfg)
    act = activation_bytes_per_sample(model_cfg, seq_len, measured) * int(micro_batch)
    return [PlanRow(model_cfg.preset, z, gpus, params, model_states_bytes(params, largest, z, gpus), act,
                    int(micro_batch), gpu_gb * 1e9) for z in stages]


def check_fits(row: PlanRow) -> None:
    """Raise ``MemoryPlanError`` naming the keys to change when ``row`` does not fit its GPU."""
    if row.fits:
        return
    raise MemoryPlanError(
        f"model preset {row.preset!r} does not fit a {row.gpu_bytes / 1e9:.0f} GB GPU: train.zero_stage={row.zero} "
        f"on train.num_workers={row.gpus} GPUs needs {row.model_states / GiB:.1f} GiB of model states + "
        f"{row.activations / GiB:.1f} GiB of activations (data.batch_size={row.micro_batch}) = "
        f"{row.total / GiB:.1f} GiB per GPU, over {HEADROOM:.0%} of {row.gpu_bytes / GiB:.1f} GiB; raise "
        f"train.zero_stage or train.num_workers, or lower data.batch_size")


def add_args(p) -> None:
    p.add_argument("--presets", default="0.5b,3b,7b", help="model presets (default: %(default)s)")
    p.add_argument("--gpus", default="1,8", help="GPU counts per run, comma-separated (default: %(default)s)")
    p.add_argument("--gpu-gb", type=float, default=H100_GB, help="GPU memory in GB (default: %(default)s, H100)")
    p.add_argument("--seq-len", type=int, default=512,
                   help="tokens per sample: the planning prompt with its visual tokens (default: %(default)s)")
    p.add_argument("--check", action="store_true",
                   help="plan only --model with --set overrides (train.zero_stage, train.num_workers, "
                        "data.batch_size) and fail naming the keys when it does not fit")
    p.add_argument("--model", default="7b", help="model preset of --check (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")


def run(args) -> int:
    from odvla.platform.config import load_config

    if args.check:
        cfg = load_config(model=args.model, stage="stage3", overrides=args.overrides)
        row = plan(cfg.model, cfg.data.batch_size, int(cfg.train.num_workers), args.seq_len, args.gpu_gb,
                   stages=(cfg.train.zero_stage,))[0]
        _print([row], args)
        check_fits(row)
        return 0
    rows = []
    for preset in args.presets.split(","):
        cfg = load_config(model=preset, stage="stage3", overrides=args.overrides)
        measured = {"llm": measure_llm_activations(cfg.model.llm, args.seq_len),
                    "vision": measure_backbone_activations(cfg.model.vision)}
        print(f"{preset}: measured float32 activations per sample, GiB: "
              + ", ".join(f"{k} {v / GiB:.3f}" for k, v in {**measured["llm"], "vision": measured["vision"]}.items()),
              flush=True)
        for gpus in [int(g) for g in args.gpus.split(",")]:
            rows += plan(cfg.model, cfg.data.batch_size, gpus, args.seq_len, args.gpu_gb, measured=measured)
    _print(rows, args)
    return 0


def _print(rows, args) -> None:
    print(f"odvla bench memory: per GPU, {args.gpu_gb:g} GB GPU (plans may use {HEADROOM:.0%}), bf16 + AdamW, "
          f"every parameter trained (stage3), {args.seq_len} tokens per sample, gradient checkpointing as the preset")
    print("| preset | params | ZeRO | GPUs | model states GiB | activations GiB (batch) | total GiB | fits |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.preset} | {r.params / 1e9:.2f} B | {r.zero} | {r.gpus} | {r.model_states / GiB:.1f} | "
              f"{r.activations / GiB:.1f} ({r.micro_batch}) | {r.total / GiB:.1f} | "
              f"{'yes' if r.fits else 'NO'} |")
