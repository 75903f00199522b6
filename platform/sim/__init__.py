"""Closed-loop simulation on the synthetic worlds (``platform/world/``): scenarios, the ego's bicycle model and
tracking controller, agents (log replay or IDM), sensors re-rendered from the simulated pose, the rollout loop,
baseline planners, and the closed-loop figures with NAVSIM's PDM score (docs/evaluation.md, "Closed loop")."""
