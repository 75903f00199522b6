"""Search spaces of the sweeps: the paper's stage-subset ablation crossed with model size (and, with
``sweep.temporal: [off, on]``, temporal perception), and LR HPO.

A trial's parameters are plain values (``stages`` is a '+'-joined string such as ``'stage1+stage3'`` so that it
prints in tables and survives Tune's flattening); ``odvla.tune.trial`` turns them into per-stage configs (model
preset from ``model_size``, stage presets from ``stages``, ``train.lr`` from ``lr``, ``data.clip_len`` and
``eval.temporal`` from ``temporal``, ``model.text.traj_encoding`` / ``compact_tokens`` / ``action_codebook`` from
``traj_encoding``, ``sweep.traj_encodings``).
"""
from __future__ import annotations

from pathlib import Path

from ray import tune

from odvla.platform.config import ConfigError, check_pipeline_order
from odvla.platform.config.schema import MODEL_PRESETS, SweepConfig

# Resources one trial's training workers need, per model size: (workers, GPUs per worker).
# 0.5b fits one H100 with ZeRO-1; 3b wants ZeRO-2 over 4; 7b ZeRO-3 over a full 8-GPU node.
TRIAL_GPUS = {"tiny": (1, 0), "0.5b": (1, 1), "3b": (4, 1), "7b": (8, 1)}


def stage_key(stages: list[str]) -> str:
    """``['stage1', 'stage3']`` -> ``'stage1+stage3'``, after checking the stages exist and are in curriculum order."""
    return "+".join(check_pipeline_order(stages, what="sweep.stage_sets"))


def temporal_values(sw: SweepConfig) -> list[str]:
    """``sweep.temporal`` as 'off' / 'on' strings (YAML reads a bare ``[off, on]`` as booleans), duplicates dropped;
    ConfigError naming the key for anything else."""
    out: list[str] = []
    for v in sw.temporal or []:
        key = {True: "on", False: "off"}.get(v) if isinstance(v, bool) else str(v).strip().lower()
        key = {"true": "on", "false": "off"}.get(key, key)
        if key not in ("off", "on"):
            raise ConfigError(f"sweep.temporal: {v!r} is neither 'off' nor 'on'")
        if key not in out:
            out.append(key)
    if not out:
        raise ConfigError("sweep.temporal: empty (use [off], [on] or [off, on])")
    if "on" in out and int(sw.temporal_clip_len) < 2:
        raise ConfigError(f"sweep.temporal_clip_len={sw.temporal_clip_len}: a temporal trial trains on clips of >= 2 "
                          "keyframes")
    return out


def temporal_overrides(value: str, sw: SweepConfig) -> list[str]:
    """A trial's temporal setting -> config overrides: 'on' trains on clips of ``sweep.temporal_clip_len`` keyframes
    and evaluates scene by scene carrying the tracking state; 'off' single keyframes, stateless evaluation."""
    if value == "on":
        return [f"data.clip_len={int(sw.temporal_clip_len)}", "eval.temporal=true"]
    if value == "off":
        return ["data.clip_len=1", "eval.temporal=false"]
    raise ConfigError(f"trial parameter temporal={value!r} is neither 'off' nor 'on'")


def traj_encoding_values(sw: SweepConfig) -> list[str]:
    """``sweep.traj_encodings`` as ``ENCODING`` / ``ENCODING+compact`` strings, duplicates dropped; ConfigError
    naming the key for an unknown encoding or flag."""
    from odvla.model.traj_codec import ENCODINGS

    out: list[str] = []
    for v in sw.traj_encodings or []:
        enc, _, flag = str(v).strip().partition("+")
        if enc not in ENCODINGS or flag not in ("", "compact") or (enc == "action" and flag):
            raise ConfigError(f"sweep.traj_encodings: {v!r} is not ENCODING[+compact] with ENCODING one of "
                              f"{', '.join(ENCODINGS)} (action takes no +compact)")
        key = f"{enc}+{flag}" if flag else enc
        if key not in out:
            out.append(key)
    return out


def traj_encoding_overrides(value: str, shards) -> list[str]:
    """A trial's ``traj_encoding`` value -> config overrides: the encoding, compact number tokens on or off, and
    for ``action`` the codebook beside ``shards`` (``odvla codebook fit`` writes it)."""
    enc, _, flag = str(value).partition("+")
    out = [f"model.text.traj_encoding={enc}", f"model.text.compact_tokens={'true' if flag == 'compact' else 'false'}"]
    if enc == "action":
        if not shards:
            raise ConfigError("sweep.traj_encodings: 'action' needs data.shards (its action_codebook.json)")
        from odvla.model.action_codebook import CODEBOOK_FILE

        out.append(f"model.text.action_codebook={Path(shards) / CODEBOOK_FILE}")
    return out


def build_param_space(sw: SweepConfig) -> dict:
    """Grid over stage sets x model sizes (``sw`` = the ``sweep`` section); learning rate from ``sweep.lrs`` (grid)
    or the stage presets' own."""
    for size in sw.model_sizes:
        if size not in MODEL_PRESETS:
            raise ConfigError(f"sweep.model_sizes: unknown size {size!r} (known: {', '.join(MODEL_PRESETS)})")
    space = {
        "stages": tune.grid_search([stage_key(s) for s in sw.stage_sets]),
        "model_size": tune.grid_search(list(sw.model_sizes)),
    }
    if sw.lrs:
        space["lr"] = tune.grid_search([float(x) for x in sw.lrs])
    temporal = temporal_values(sw)
    if temporal != ["off"]:  # the default adds no axis: existing sweeps keep their trials and parameters
        space["temporal"] = tune.grid_search(temporal)
    encodings = traj_encoding_values(sw)
    if encodings:
        space["traj_encoding"] = tune.grid_search(encodings)
    return space


def build_hpo_space(sw: SweepConfig) -> dict:
    """Learning-rate HPO for one stage set and size (``sw`` = the ``sweep`` section): the searcher samples ``lr``
    log-uniformly."""
    space = {
        "stages": stage_key(sw.stage_sets[0]),
        "model_size": sw.model_sizes[0],
        "lr": tune.loguniform(sw.lr_min, sw.lr_max),
    }
    temporal = temporal_values(sw)
    if temporal != ["off"]:  # the searcher tunes the LR of one setting: the first listed
        space["temporal"] = temporal[0]
    encodings = traj_encoding_values(sw)
    if encodings:
        space["traj_encoding"] = encodings[0]
    return space


def trial_resources(size: str, use_gpu: bool) -> tuple[int, int]:
    """(num_workers, gpus_per_worker) for a trial of this model size."""
    workers, gpus = TRIAL_GPUS[size]
    return (workers, gpus) if use_gpu else (1, 0)


def trial_gpus(size: str, use_gpu: bool) -> int:
    workers, gpus = trial_resources(size, use_gpu)
    return workers * gpus


def max_concurrent_trials(sw: SweepConfig, cluster_gpus: float, use_gpu_by_size: dict) -> int:
    """``sweep.max_concurrent_trials``, or (0 = auto) as many of the largest trial as the cluster's GPUs hold.

    Tune does not know that a trial's TorchTrainer will ask for GPUs (the trial driver itself holds 1 CPU), so
    without a cap it would start every trial at once and they would wait on each other's GPUs.
    """
    if sw.max_concurrent_trials > 0:
        return sw.max_concurrent_trials
    need = max(trial_gpus(s, use_gpu_by_size[s]) for s in sw.model_sizes)
    if need == 0:
        return 1
    return max(1, int(cluster_gpus // need))
