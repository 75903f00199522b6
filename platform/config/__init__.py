"""Typed config: ``Config`` dataclass tree, presets, YAML and ``--set`` overrides."""
from odvla.platform.config.loader import (  # noqa: F401
    ConfigError,
    apply_override,
    dump_yaml,
    flatten,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from odvla.platform.config.schema import CAMERAS, MODEL_PRESETS, Config  # noqa: F401
from odvla.platform.config.stage_catalog import check_pipeline_order, stage_names  # noqa: F401
