"""``odvla config``: print the resolved config (presets + files + overrides) as YAML; ``--params``: the parameter
counts of the model it builds (built on the meta device: no memory, no weights read)."""
from __future__ import annotations

from odvla.platform.config import dump_yaml
from odvla.platform.config.args import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config as YAML")
    add_config_args(p)
    p.add_argument("--params", action="store_true",
                   help="print the vision, projector and LLM parameter counts of the model instead")
    p.set_defaults(func=run)


def parameter_counts(model_cfg) -> dict[str, int]:
    """Parameters of ``OpenDriveVLA(model_cfg)`` built on the meta device, per part: vision, projectors (the
    visual projectors and the ego-state projector when present), llm (its embedding includes the model's added
    tokens), total."""
    import warnings

    import torch

    from odvla.model.vla import OpenDriveVLA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights notice is about training, not counting
        with torch.device("meta"):
            model = OpenDriveVLA(model_cfg)
    n = lambda mod: sum(p.numel() for p in mod.parameters()) if mod is not None else 0  # noqa: E731
    counts = {"vision": n(model.vision),
              "projectors": n(model.projectors) + n(getattr(model, "ego_projector", None)),
              "llm": n(model.llm)}
    counts["total"] = n(model)
    return counts


def run(args) -> int:
    cfg = config_from_args(args)
    if not getattr(args, "params", False):
        print(dump_yaml(cfg), end="")
        return 0
    counts = parameter_counts(cfg.model)
    print(f"model preset {cfg.model.preset} (llm.path: {cfg.model.llm.path or 'unset, random init'})")
    for part in ("vision", "projectors", "llm", "total"):
        print(f"  {part:<11}{counts[part]:>15,d}  ({counts[part] / 1e6:,.1f} M)")
    return 0
