"""Consolidated model export: the hand-over between stages, and what eval and serve load.

    <out_dir>/model.safetensors   all weights (shared tensors stored once), dtype ``model.dtype``
    <out_dir>/config.yaml         the resolved job config of the run that wrote it (``model:`` rebuilds the network)
    <out_dir>/tokenizer/          the tokenizer (``save_pretrained``), so the export loads without rebuilding it;
                                  with ``model.text.traj_encoding: action`` also its ``action_codebook.json``
    <out_dir>/export.json         format version, stage, parameter count

``load_export(ref)`` takes a folder, ``runs:/<run_id>/export`` or ``models:/odvla-planner/<version|alias>``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from odvla.model.llm import DTYPES
from odvla.platform.config import Config, dump_yaml, from_dict
from odvla.platform.config.loader import read_yaml

EXPORT_FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
META = "export.json"



def save_export(model, cfg: Config, out_dir: str | os.PathLike, state_dict: Optional[dict] = None) -> Path:
    """Write the export atomically (a temp folder renamed into place). ``state_dict``: weights gathered from a
    sharded engine (ZeRO-3); default ``model.state_dict()``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = DTYPES.get(cfg.model.dtype, torch.float32)
    sd = state_dict if state_dict is not None else model.state_dict()
    tensors, seen = {}, {}
    for name, t in sd.items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(dtype)
        key = (t.data_ptr(), t.shape, t.stride()) if t.numel() else None
        if key is not None and key in seen:  # tied weights (e.g. tie_word_embeddings): stored once
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.contiguous()
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "odvla_export": str(EXPORT_FORMAT)})
    (tmp / CONFIG).write_text(dump_yaml(cfg))
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        tok.save_pretrained(str(tmp / TOKENIZER))
    if cfg.model.text.traj_encoding == "action":  # the codebook travels with the tokens that name its entries
        _copy_codebook(cfg.model.text, tmp / TOKENIZER)
    meta = {"format": EXPORT_FORMAT, "stage": cfg.stage.name, "model_preset": cfg.model.preset,
            "dtype": cfg.model.dtype,  # ds_numel: a ZeRO-3 partitioned parameter's full size
            "num_parameters": int(sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())),
            "num_tensors": len(tensors)}
    (tmp / META).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve_export(ref: str | os.PathLike, tracking_uri: Optional[str] = None) -> Path:
    """Local folder of an export reference, downloading ``runs:/`` and ``models:/`` URIs through MLflow."""
    ref = str(ref)
    if ref.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow

        from odvla.platform.tracking.store import resolve_tracking_uri

        uri = resolve_tracking_uri(tracking_uri)
        try:
            if ref.startswith("runs:/") and ref.rstrip("/").count("/") == 1:
                ref = ref.rstrip("/") + "/export"  # runs:/<id> -> its export artifact
            source = _model_version_source(ref, uri) if ref.startswith("models:/") else ref
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri))
        except Exception as e:
            raise FileNotFoundError(f"model export {ref}: cannot download it from MLflow ({e})") from e
    else:
        path = Path(ref)
    if not (path / WEIGHTS).exists() or not (path / CONFIG).exists():
        raise FileNotFoundError(f"model export {ref}: {path} has no {WEIGHTS} and {CONFIG} (not an export folder)")
    return path


def _model_version_source(ref: str, uri: str) -> str:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (or ``/<alias>``) -> the version's artifact
    source, asked of the registry at ``uri`` (the same store as tracking)."""
    from mlflow.tracking import MlflowClient

    from odvla.platform.tracking.registry import parse_model_ref

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, version, alias = parse_model_ref(ref)
    mv = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    return mv.source


def _copy_codebook(text_cfg, tokenizer_dir: Path) -> None:
    from odvla.model.action_codebook import CODEBOOK_FILE, load_codebook

    if not text_cfg.action_codebook:
        raise ValueError("save_export: model.text.traj_encoding 'action' without model.text.action_codebook")
    load_codebook(text_cfg.action_codebook, text_cfg.action_codebook_size)  # a bad file never enters an export
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(text_cfg.action_codebook, tokenizer_dir / CODEBOOK_FILE)


def load_export_config(ref: str | os.PathLike, tracking_uri: Optional[str] = None) -> tuple[Path, Config]:
    """-> (folder, config). An 'action' export's ``model.text.action_codebook`` is its own copy
    (``tokenizer/action_codebook.json``), whatever path the training run had."""
    path = resolve_export(ref, tracking_uri)
    cfg = from_dict(read_yaml(path / CONFIG))
    if cfg.model.text.traj_encoding == "action":
        from odvla.model.action_codebook import CODEBOOK_FILE, load_codebook

        cfg.model.text.action_codebook = str(path / TOKENIZER / CODEBOOK_FILE)
        load_codebook(cfg.model.text.action_codebook, cfg.model.text.action_codebook_size)
    return path, cfg


def load_weights(model, path: str | os.PathLike, strict: bool = True) -> None:
    """Load an export's weights into a model of the same architecture (tied weights restored by the module)."""
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    state = load_file(str(file))
    own = model.state_dict()
    for name, t in list(state.items()):
        if name in own and own[name].dtype != t.dtype:
            state[name] = t.to(own[name].dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied parameters are stored once; a missing name is fine when the module shares it with a stored one.
    ptr_names = {}
    for name, t in own.items():
        ptr_names.setdefault(t.data_ptr(), []).append(name)
    really_missing = [m for m in missing
                      if not any(n in state for n in ptr_names.get(own[m].data_ptr(), []) if n != m)]
    if strict and (really_missing or unexpected):
        raise ValueError(f"export {file} does not fit the model: missing {really_missing[:8]}"
                         f"{'...' if len(really_missing) > 8 else ''}, unexpected {unexpected[:8]}")


def model_for_weights(model_cfg, tokenizer=None, llm_dtype: Optional[torch.dtype] = None):
    """An ``OpenDriveVLA`` whose weights are about to be replaced by an export's: the LLM is built without its
    random init (about 15 s of CPU at 0.5b, minutes at 7b), its output embedding tied as usual, in ``llm_dtype``
    (default: torch's default dtype). With ``model.llm.path`` the pretrained weights are loaded as usual."""
    from transformers.initialization import no_init_weights

    from odvla.model.vla import OpenDriveVLA

    if model_cfg.llm.path:
        return OpenDriveVLA(model_cfg, tokenizer=tokenizer)

    def llm_context():
        stack = contextlib.ExitStack()
        if llm_dtype is not None:
            stack.enter_context(default_dtype(llm_dtype))
        stack.enter_context(no_init_weights())
        return stack

    model = OpenDriveVLA(model_cfg, tokenizer=tokenizer, llm_context=llm_context)
    model.llm.tie_weights()
    return model


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default floating dtype set to ``dtype`` for the block: modules built in it hold ``dtype`` weights
    from the start (a bf16 0.5b LLM never exists in float32: 1 GB instead of 2 GB)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def load_export(ref: str | os.PathLike, device: str = "cpu", tracking_uri: Optional[str] = None):
    """-> (model, cfg): an ``OpenDriveVLA`` in eval mode on ``device`` with the export's weights and tokenizer."""
    path, cfg = load_export_config(ref, tracking_uri)
    tokenizer = None
    if (path / TOKENIZER).exists():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path / TOKENIZER))
    model = model_for_weights(cfg.model, tokenizer=tokenizer)
    load_weights(model, path)
    dtype = DTYPES.get(cfg.model.dtype, torch.float32)
    model = model.to(device=device, dtype=dtype) if dtype != torch.float32 else model.to(device)
    model.eval()
    return model, cfg
