"""Closed-loop driving figures of a rollout, and :func:`score_rollout`, which adds NAVSIM's PDM score.

Boxes are shapely polygons of the ego's box (``vehicle.ego_boxes``: 4.084 m x 1.85 m, centre 0.5 m ahead of the
rear axle) and of each actor's box, at every 10-Hz physics frame.

- ``route_completion``: the furthest the ego's rear axle got along the route (the logged ego's path over the
  scenario; ``shapely.line_locate_point``), divided by the route's length, in [0, 1].
- ``collisions``: a collision event is the first frame of each spell of contact (polygon intersection) between the
  ego's box and one actor's box; its ``impact_speed`` is the norm of the relative velocity ``|v_ego - v_actor|``
  (m/s) at that frame, as NeuroNCAP measures it (atonderski/neuro-ncap ``neuro_ncap/components/evaluator.py``,
  ``_compute_ncap_score``). ``collisions_per_km``: events per kilometre driven (NaN when the ego did not move).
- ``offroad_time_s``: the time (frames x 0.1 s) with any of the ego box's four corners outside the drivable area
  (``shapely.covers``: a corner on the boundary is inside).
- ``ncap_score`` (safety scenarios): NeuroNCAP's score, 5 without a collision, else
  ``4 * max(0, 1 - v_impact / v_ref)`` with ``v_impact`` the impact speed of the *first* collision with any actor
  (NeuroNCAP's collision check tests all actors and its score reads ``collisions[0]``) and ``v_ref`` the scenario's
  reference impact speed (``Scenario.reference_impact_speed``).
- ``pdms`` and its sub-scores: ``platform/sim/pdms.py`` (``score_pdm``) on the rollout's trace, with the logged
  ego's progress along the route as EP's reference.
"""
from __future__ import annotations

import numpy as np
import shapely

from odvla.platform.sim.vehicle import EGO_FORWARD_SHIFT, EGO_LENGTH, EGO_WIDTH, PHYSICS_DT, box_corners, box_polygon

NCAP_NO_COLLISION = 5.0
NCAP_COLLISION_MAX = 4.0


def frame_checks(ego_box: np.ndarray, agent_boxes: np.ndarray, drivable) -> tuple[np.ndarray, bool]:
    """One frame: contact [N] bool (the ego box [5] intersects each actor box [N, 5]; False for NaN rows) and
    whether an ego corner lies outside ``drivable`` (shapely geometry)."""
    ego = box_polygon(ego_box)
    polys = box_polygon(agent_boxes)
    present = np.array([p is not None for p in polys], bool)
    contact = np.zeros(len(polys), bool)
    if present.any():
        contact[present] = shapely.intersects(ego, polys[present].astype(object))
    corners = box_corners(ego_box)
    offroad = not bool(shapely.covers(drivable, shapely.points(corners)).all())
    return contact, offroad


def route_completion(pose: np.ndarray, route: np.ndarray) -> float:
    """Furthest progress of the rear axle ``pose`` [T, 3] along ``route`` [M, 2] over its length, in [0, 1]."""
    line = shapely.LineString(route)
    if line.length <= 0:
        raise ValueError("route_completion: the route has no length")
    s = shapely.line_locate_point(line, shapely.points(pose[:, :2]))
    return float(np.clip(s.max() / line.length, 0.0, 1.0))


def distance_driven(pose: np.ndarray) -> float:
    """Path length (m) of the rear axle ``pose`` [T, 3]."""
    return float(np.linalg.norm(np.diff(pose[:, :2], axis=0), axis=1).sum())


def ego_velocity(pose: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """[T, 2] m/s global: speed along the heading (the rear axle has no side slip)."""
    return speed[:, None] * np.stack([np.cos(pose[:, 2]), np.sin(pose[:, 2])], -1)


def collision_events(contact: np.ndarray, ego_vel: np.ndarray, agent_vel: np.ndarray, t: np.ndarray,
                     kinds) -> list[dict]:
    """Collision events (module docstring) from contact [T, N], ego velocity [T, 2], actor velocities [T, N, 2] and
    times [T]: dicts ``frame``, ``t`` s, ``actor``, ``kind``, ``impact_speed`` m/s, in time order."""
    starts = contact & ~np.vstack([np.zeros((1, contact.shape[1]), bool), contact[:-1]])
    out = []
    for k, i in zip(*np.nonzero(starts)):
        va = np.nan_to_num(agent_vel[k, i])
        out.append({"frame": int(k), "t": float(t[k]), "actor": int(i), "kind": str(kinds[i]),
                    "impact_speed": float(np.linalg.norm(ego_vel[k] - va))})
    return out


def ncap_score(events: list[dict], reference_impact_speed: float) -> float:
    """NeuroNCAP's score: 5 without a collision, else ``4 * max(0, 1 - v_impact / v_ref)`` of the first one."""
    if not events:
        return NCAP_NO_COLLISION
    if not reference_impact_speed > 0:
        raise ValueError(f"ncap_score: reference impact speed {reference_impact_speed} must be > 0")
    return NCAP_COLLISION_MAX * max(0.0, 1.0 - events[0]["impact_speed"] / reference_impact_speed)


def score_rollout(rollout) -> dict:
    """Every closed-loop figure of ``rollout`` (a :class:`~odvla.platform.sim.rollout.Rollout`) as a flat dict:
    ``route_completion``, ``distance_m``, ``collisions``, ``collisions_per_km``, ``max_impact_speed`` (0 without a
    collision), ``first_impact_speed`` (NaN without one), ``offroad_time_s``, ``planner_errors``, ``ticks``,
    ``ncap_score`` (safety scenarios only), ``pdms``, ``pdms_nc``, ``pdms_dac``, ``pdms_ttc``, ``pdms_ep``,
    ``pdms_comfort``; and ``collision_events`` (a list, see :func:`collision_events`)."""
    r = rollout
    ego_vel = ego_velocity(r.ego_pose, r.ego_speed)
    events = collision_events(r.contact, ego_vel, r.agent_velocities, r.t, r.agent_kinds)
    dist = distance_driven(r.ego_pose)
    out = {
        "route_completion": route_completion(r.ego_pose, r.route),
        "distance_m": dist,
        "collisions": len(events),
        "collisions_per_km": len(events) / (dist / 1000.0) if dist > 0 else float("nan"),
        "max_impact_speed": max((e["impact_speed"] for e in events), default=0.0),
        "first_impact_speed": events[0]["impact_speed"] if events else float("nan"),
        "offroad_time_s": float(r.offroad.sum() * PHYSICS_DT),
        "planner_errors": r.n_planner_errors,
        "ticks": len(r.tick_t),
    }
    if r.target is not None:
        out["ncap_score"] = ncap_score(events, r.reference_impact_speed)
    out.update(pdm_hook(r))
    out["collision_events"] = events
    return out


def pdm_hook(r) -> dict:
    """NAVSIM's PDM score of the rollout through ``platform/sim/pdms.py``'s ``score_pdm``: the trace at the ego box
    centre, the actors as recorded, the drivable area and route; EP's reference is the logged ego's progress along
    the route (its box centre, projected)."""
    from odvla.platform.sim.pdms import PDMInputs, score_pdm

    centre = r.ego_box[:, :3]
    line = shapely.LineString(r.route)
    log_c = r.ego_log_pose[:, :2] + EGO_FORWARD_SHIFT * np.stack([np.cos(r.ego_log_pose[:, 2]),
                                                                   np.sin(r.ego_log_pose[:, 2])], -1)
    s = shapely.line_locate_point(line, shapely.points(log_c[[0, -1]]))
    best = max(float(s[1] - s[0]), 0.0)
    res = score_pdm(PDMInputs(
        t=r.t, ego_pose=centre, ego_speed=r.ego_speed, ego_length=EGO_LENGTH, ego_width=EGO_WIDTH,
        agent_boxes=r.agent_boxes, agent_velocity=r.agent_velocities, agent_kinds=tuple(r.agent_kinds),
        drivable=r.drivable_area, route=r.route, best_progress_m=best, ego_accel=r.ego_accel,
        rear_axle_offset_m=EGO_FORWARD_SHIFT))
    return {"pdms": res.score, "pdms_nc": res.nc, "pdms_dac": res.dac, "pdms_ttc": res.ttc, "pdms_ep": res.ep,
            "pdms_comfort": res.comfort}
