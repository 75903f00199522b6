"""Ray Serve HTTP planner for OpenDriveVLA.

- ``schemas``: request/response models of API v1 (pydantic; the OpenAPI spec is generated from them).
- ``preprocess``: request -> the model batch (``odvla.model.batch``), with the training image pipeline.
- ``deployment``: ``Planner``, the model replica (dynamic batching, per-scene state, health check).
- ``routing``: ``SessionAffinityRouter``, the request router that keeps a session on the replica holding its state.
- ``app``: ``PlannerAPI``, the FastAPI ingress, and ``build_app`` for ``serve run serve/config.yaml``.
- ``client``: ``PlannerClient`` (Python HTTP client); ``cli``: ``odvla serve`` / ``odvla plan``; ``bench``:
  ``odvla bench serve``.
"""
