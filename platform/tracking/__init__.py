"""MLflow tracking for the platform: store resolution, a tracker that survives a lost server, lineage, registry.

    from odvla.platform.tracking import resolve_tracking_uri, ResilientTracker, stage_run, register_export
"""
from odvla.platform.tracking.lineage import (  # noqa: F401
    TAG_CHECKPOINT,
    TAG_EXPORT,
    TAG_INIT_FROM,
    TAG_INIT_FROM_RUN,
    TAG_PIPELINE,
    TAG_RUN_KEY,
    TAG_STAGE,
    find_run,
    get_or_create_run,
)
from odvla.platform.tracking.registry import register_export  # noqa: F401
from odvla.platform.tracking.resilient import ResilientTracker  # noqa: F401
from odvla.platform.tracking.store import ensure_experiment, local_store_uri, resolve_tracking_uri  # noqa: F401
