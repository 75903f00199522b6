"""Build the model for a DeepSpeed engine; under ZeRO-3 the LLM is built partitioned, never whole on one rank.

    build_model(model_cfg, ds_config, init_from)        (the ZeRO stage is the DeepSpeed dict's)
      zero_stage < 3: OpenDriveVLA(model_cfg)  (+ the init export's weights)
      zero_stage 3:   OpenDriveVLA(model_cfg, llm_context=<deepspeed.zero.Init>)
                        each LLM parameter is split over the ranks as soon as its module is built
                        (``p.ds_tensor``: this rank's 1/world slice, ``p.data`` an empty placeholder)
                      random init: transformers' ZeRO-3 init (each module gathered, initialised on rank 0, split)
                      llm.path:    transformers loads the Qwen2.5 folder straight into the partitions
                      init_from:   the export's tensors copied module by module (gathered, written, split)

The rest of the model (vision encoder, projectors: ~0.1 B parameters at the real presets against 0.5-7.6 B in the
LLM) is built whole and partitioned by ``deepspeed.initialize``. The model never imports DeepSpeed: it only takes the
context its LLM is built in. transformers' own switch (``HfDeepSpeedConfig``) needs ``accelerate``; the flag it sets
is set here directly for the duration of the build.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from odvla.model.config import ModelConfig


class Zero3ConfigError(ValueError):
    """A ZeRO-3 setup that cannot be built; the message names the config key."""


def check_zero3(ds_config: dict) -> None:
    """Reject ZeRO-3 settings that cannot be built, naming the key: a ``train.zero_stage`` other than 3 in a
    ZeRO-3 DeepSpeed dict, or one that would not gather the weights for the export. (A vocabulary the embedding
    would have to grow after partitioning is refused by ``build_model``, naming ``model.llm.vocab_size``.)"""
    zero = ds_config.get("zero_optimization", {})
    if int(zero.get("stage", -1)) != 3:
        raise Zero3ConfigError(f"train.zero_stage: partitioned init needs ZeRO stage 3, the DeepSpeed config has "
                               f"stage {zero.get('stage')}")
    if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise Zero3ConfigError("train.zero_stage=3: the DeepSpeed config must gather the weights on save "
                               "(zero_optimization.stage3_gather_16bit_weights_on_model_save), or the export "
                               "would hold empty tensors")


class _Zero3Flag:
    """What ``transformers.integrations.HfDeepSpeedConfig`` registers: the DeepSpeed dict and ``is_zero3()``.
    While it is registered, transformers builds and loads its models partitioned (``from_pretrained`` under
    ``deepspeed.zero.Init``; embedding resizes gathered)."""

    def __init__(self, ds_config: dict):
        self.config = ds_config

    def is_zero3(self) -> bool:
        return True


@contextlib.contextmanager
def _transformers_zero3(ds_config: dict):
    from transformers.integrations import deepspeed as hf_ds

    flag = _Zero3Flag(ds_config)  # held here: transformers keeps only a weak reference
    hf_ds.set_hf_deepspeed_config(flag)
    try:
        yield flag
    finally:
        hf_ds.unset_hf_deepspeed_config()


def _llm_context(ds_config: dict, random_init: bool):
    """The LLM's build context: ``deepspeed.zero.Init`` (parameters split as their modules are built); for a random
    init also transformers' ``no_init_weights`` (its init would write into the empty placeholders) and its guard
    that keeps the RoPE frequencies in float32 when ZeRO-3 casts new tensors to bf16."""
    import deepspeed
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    def ctx():
        stack = contextlib.ExitStack()
        if random_init:
            stack.enter_context(no_init_weights())
        stack.enter_context(prevent_arange_dtype_change())
        stack.enter_context(deepspeed.zero.Init(config_dict_or_path=ds_config))
        return stack

    return ctx


def engine_dtype(ds_config: dict) -> Optional[torch.dtype]:
    """The 16-bit dtype a DeepSpeed engine built from ``ds_config`` casts the parameters to; None for float32."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return None


def build_model(model_cfg: ModelConfig, ds_config: dict, init_from: Optional[str | os.PathLike] = None):
    """The stage's model (``model_cfg``: ``model``) for a DeepSpeed engine built from ``ds_config``
    (``build_ds_config``, whose ``zero_optimization.stage`` is ``train.zero_stage``); ``init_from``: an export
    folder whose weights replace the initial ones. ZeRO-3: the LLM partitioned across the ranks from its first
    parameter (see the module docstring)."""
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.export import default_dtype, load_weights, model_for_weights

    if int(ds_config.get("zero_optimization", {}).get("stage", 0)) != 3:
        dtype = engine_dtype(ds_config)  # the engine casts to it anyway: the LLM is built in it (half the memory)
        if not init_from:
            return OpenDriveVLA(model_cfg, llm_context=(lambda: default_dtype(dtype)) if dtype else None)
        model = model_for_weights(model_cfg, llm_dtype=dtype)  # the export replaces every weight: no random init
        load_weights(model, init_from)
        return model

    check_zero3(ds_config)
    if not torch.distributed.is_initialized():
        raise Zero3ConfigError("train.zero_stage=3: the model is partitioned over the ranks of a torch.distributed "
                               "process group and none is initialised (build it inside the Ray Train workers, or "
                               "use train.zero_stage 1 or 2 for a single process)")
    import deepspeed

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())  # adopts Ray Train's process group
    random_init = not model_cfg.llm.path
    try:
        with _transformers_zero3(ds_config):
            # a vocabulary larger than the model's (llm.path + added tokens) grows the embedding gathered
            model = OpenDriveVLA(model_cfg, llm_context=_llm_context(ds_config, random_init))
            if random_init:
                from transformers.integrations.deepspeed import initialize_weights_zero3

                initialize_weights_zero3(model.llm)
                model.llm.tie_weights()
    except (RuntimeError, ValueError, AssertionError) as e:
        raise Zero3ConfigError(f"train.zero_stage=3: could not build model preset {model_cfg.preset!r} partitioned "
                               f"(model.llm.path={model_cfg.llm.path!r}): {e}") from e
    dtype = engine_dtype(ds_config)
    if dtype is not None:  # DeepSpeed casts no parameter of a ZeRO-3-initialised model: the parts built whole
        for p in model.parameters():  # (vision, projectors) join the partitioned LLM's 16-bit dtype here
            if not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    if init_from:
        load_weights_partitioned(model, init_from)
    return model


def load_weights_partitioned(model, path: str | os.PathLike) -> None:
    """Load an export (``model.safetensors``) into a model whose parameters may be ZeRO-3 partitioned: module by
    module, that module's parameters are gathered, rank 0 writes the export's tensors, and they are split again, so
    at most one module's weights are whole at a time. Names every missing or extra tensor, like ``load_weights``."""
    import deepspeed
    from safetensors import safe_open

    from odvla.platform.export import WEIGHTS

    file = Path(path) / WEIGHTS
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with safe_open(str(file), framework="pt") as f:
        stored = set(f.keys())
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers())
        shared = _shared_names(model)
        missing = [n for n in params if n not in stored and not (shared.get(n, set()) & stored)]
        unexpected = sorted(stored - set(params) - set(buffers))
        if missing or unexpected:
            raise ValueError(f"export {file} does not fit the model: missing {missing[:8]}"
                             f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
        for mod_name, module in model.named_modules():
            own = list(module.named_parameters(recurse=False))
            if not own:
                continue
            with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=0):
                if rank == 0:
                    with torch.no_grad():
                        for pname, p in own:
                            full = f"{mod_name}.{pname}" if mod_name else pname
                            key = full if full in stored else next(iter(shared.get(full, set()) & stored), None)
                            if key is not None:
                                p.data.copy_(f.get_tensor(key).to(p.dtype).reshape(p.data.shape))
        with torch.no_grad():
            for name, b in buffers.items():
                if name in stored:
                    b.copy_(f.get_tensor(name).to(b.dtype))


def _shared_names(model) -> dict:
    """Parameter name -> the other names of the same tensor (tied embeddings)."""
    by_id: dict = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), set()).add(n)
    return {n: names - {n} for names in by_id.values() for n in names}


def local_parameter_counts(model) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): a ZeRO-3 parameter counts its local slice
    (``ds_tensor``) and its full size (``ds_numel``); any other parameter counts whole on both sides."""
    local = total = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if hasattr(p, "ds_tensor"):
            local += int(p.ds_tensor.numel())
            total += int(p.ds_numel)
        else:
            local += p.numel()
            total += p.numel()
    return local, total


def gather_parameter_counts(model, rank: int, world: int) -> dict:
    """``{'params_local_rank<r>': elements rank r holds, 'params_total': elements of the model}`` over all ranks (a
    collective when ``world > 1``), logged as MLflow params: under ZeRO-3 each rank holds about 1/world of the LLM."""
    local, total = local_parameter_counts(model)
    counts = [local]
    if world > 1:
        counts = [None] * world
        torch.distributed.all_gather_object(counts, local)
    return {**{f"params_local_rank{r}": c for r, c in enumerate(counts)}, "params_total": total}
