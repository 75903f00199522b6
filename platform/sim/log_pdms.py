"""``odvla eval --protocol pdms``: NAVSIM's PDM score of every keyframe's 3-s plan, non-reactively, on the logs.

    pdms_metrics(data_cfg, val, plans) -> (metrics, per-sample rows)
    LogPDMS(): the same as an extra protocol of ``run_eval`` (``platform/eval/evaluate.py``)

It lives with the simulator, whose tracker and score it uses: ``platform/sim`` builds on ``platform/eval`` (its
baselines and ego box), so the evaluation takes this protocol as an object from its entry points (``odvla eval``)
instead of importing it.

NAVSIM's evaluation (autonomousvision/navsim ``navsim/evaluate/pdm_score.py``, its metric cache
``navsim/planning/metric_caching/metric_cache_processor.py``) tracks each plan with its controller and motion model
at 10 Hz and scores the trace against the logged agents; here, per val keyframe:

1. the plan (6 waypoints at 0.5 s, the keyframe's ego frame, rear axle) goes into the global frame with the
   keyframe's ego pose (``ego2global``) and is driven by ``platform/sim/tracking.py:track_plan`` for 3 s from the
   logged start state (speed, acceleration and yaw rate of ``ego_state``; the steering angle that gives that yaw
   rate), 31 states;
2. the agents are the annotations of this and the following keyframes up to 4 s (the 3-s horizon plus TTC's 1-s
   projection, as NAVSIM's observation spans its horizon + 1 s), read with the devkit ``NuScenes``: per instance its
   centre, yaw and ``box_velocity`` linearly interpolated to 10 Hz between its first and last annotation (heading
   unwrapped), absent outside them; an instance annotated only once is present at every frame (both as
   ``StateInterpolator`` in NAVSIM's metric cache does). Past the scene's last keyframe agents move on at their
   velocity (``score_pdm``). Kinds: ``vehicle.bicycle`` / ``vehicle.motorcycle`` -> bicycle, other ``vehicle.*``
   -> vehicle, ``human.*`` and ``animal`` -> pedestrian, ``movable_object.*`` / ``static_object.*`` -> static;
3. the map is the devkit's ``NuScenesMap`` of the scene's log location: the drivable area is the union of the
   ``drivable_area`` and ``carpark_area`` polygons within 100 m (NAVSIM's drivable layers include car parks), the
   lanes are ``lane`` and ``lane_connector`` polygons, intersections the ``road_segment`` polygons with
   ``is_intersection``;
4. the route (EP's centreline, NAVSIM's PDM-Closed centreline in the reference) is the logged ego path from this
   keyframe to the scene's end, extended straight 100 m past both ends so that a plan that goes further than the
   log still makes progress;
5. EP's best safe progress (NAVSIM: PDM-Closed's) is the logged expert future driven the same way, its progress
   times its NC * DAC: there is no PDM-Closed proposal set here, and the expert is the safe reference the logs hold.

Methods are scored where their plan is finite and the keyframe has a complete 3-s logged future (NAVSIM's test
scenes always have one); the others are counted (``pdms/skipped_short_future``). Figures per method prefix
(``''`` the model, ``cv/``, ``mlp/``, ``expert/``): ``pdms/score``, ``pdms/nc``, ``pdms/dac``, ``pdms/ttc``,
``pdms/ep``, ``pdms/comfort`` (means over the scored samples, as NAVSIM averages) and ``pdms/n``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import shapely

from odvla.model.constants import EGO_STATE_FIELDS, FUTURE_STEPS, STEP_SECONDS
from odvla.platform.sim.pdms import PDMInputs, score_pdm

log = logging.getLogger(__name__)

HORIZON_S = FUTURE_STEPS * STEP_SECONDS  # 3 s
AGENT_HORIZON_S = HORIZON_S + 1.0  # + TTC's 1-s projection
DT = 0.1
MAP_RADIUS = 100.0  # m around the ego (NAVSIM's map_radius)
ROUTE_EXTENSION = 100.0  # m
SUBSCORES = ("score", "nc", "dac", "ttc", "ep", "comfort")
METHODS = (("this model", ""), ("constant velocity", "cv/"), ("ego-status MLP", "mlp/"),
           ("logged expert", "expert/"))
ROW_COLUMNS = ("sample_token", "ego2global", "ego_state", "future_traj", "future_mask")


def agent_kind(category: str) -> str:
    """nuScenes category -> PDM kind (module docstring)."""
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "bicycle"
    if category.startswith("vehicle."):
        return "vehicle"
    if category.startswith(("human.", "animal")):
        return "pedestrian"
    return "static"


def _yaw(q) -> float:
    w, x, y, z = q
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _dataroot_version(data) -> tuple[str, str]:
    from odvla.platform.data.shards import read_manifest

    if data.dataroot:
        return str(data.dataroot), data.version
    m = read_manifest(data.shards)
    return str(m["dataroot"]), str(m.get("version", data.version))


def map_path(dataroot: str, location: str) -> Path:
    return Path(dataroot) / "maps" / "expansion" / f"{location}.json"


def check_maps(data, rows) -> None:
    """Before any model runs: every log location of ``rows`` (a table with ``sample_token``, ``log_location``) has
    its map expansion under the dataroot; else a FileNotFoundError naming the location, the file and a sample."""
    dataroot, _ = _dataroot_version(data)
    first: dict[str, str] = {}
    for tok, loc in zip(rows.column("sample_token").to_pylist(), rows.column("log_location").to_pylist()):
        first.setdefault(loc, tok)
    for loc, tok in sorted(first.items()):
        if not map_path(dataroot, loc).is_file():
            raise FileNotFoundError(f"pdms: sample {tok}: no map for location {loc!r} (missing "
                                    f"{map_path(dataroot, loc)}); the PDM score needs the map expansion's "
                                    "drivable_area")


class MapLayers:
    """One location's drivable, lane and intersection polygons (global frame), indexed for radius queries."""

    def __init__(self, dataroot: str, location: str, sample_token: str):
        from nuscenes.map_expansion.map_api import NuScenesMap

        path = map_path(dataroot, location)
        if not path.is_file():
            raise FileNotFoundError(f"pdms: sample {sample_token}: no map for location {location!r} "
                                    f"(missing {path}); the PDM score needs the map expansion's drivable_area")
        nmap = NuScenesMap(dataroot=dataroot, map_name=location)

        def polys(records, key="polygon_token"):
            out = []
            for r in records:
                for tok in (r[key] if isinstance(r[key], list) else [r[key]]):
                    g = nmap.extract_polygon(tok)
                    if g.is_valid and not g.is_empty:
                        out.append(g)
            return out

        self.location = location
        self.drivable = polys(nmap.drivable_area, "polygon_tokens") + polys(nmap.carpark_area)
        self.lanes = polys(nmap.lane) + polys(nmap.lane_connector)
        self.intersections = polys([r for r in nmap.road_segment if r.get("is_intersection")])
        if not self.drivable:
            raise ValueError(f"pdms: sample {sample_token}: map {location!r} ({path}) has no drivable_area polygons")
        self._trees = {k: shapely.STRtree(v) if v else None
                       for k, v in (("drivable", self.drivable), ("lanes", self.lanes),
                                    ("intersections", self.intersections))}

    def near(self, layer: str, x: float, y: float, radius: float = MAP_RADIUS) -> list:
        tree = self._trees[layer]
        if tree is None:
            return []
        idx = tree.query(shapely.box(x - radius, y - radius, x + radius, y + radius))
        geoms = getattr(self, layer)
        return [geoms[i] for i in sorted(idx)]


@dataclass
class Scene:
    """What every method of one keyframe is scored against: agents [Ta, N, 5] / [Ta, N, 2], kinds, map, route."""

    boxes: np.ndarray
    velocity: np.ndarray
    kinds: tuple
    drivable: object
    lanes: tuple
    intersections: object
    route: np.ndarray


def logged_agents(nusc, sample_token: str, cache: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Annotations of ``sample_token``'s keyframe and the following ones up to 4 s, at 10 Hz (module docstring):
    boxes [Ta, N, 5] (x, y, yaw, length, width; global), velocity [Ta, N, 2] m/s, kinds; Ta = 41 or fewer where
    the scene ends first. ``cache``: annotation token -> its reading, shared across the keyframes of a split."""
    cache = {} if cache is None else cache
    sample = nusc.get("sample", sample_token)
    t0 = sample["timestamp"]
    tracks: dict[str, list] = {}
    info: dict[str, tuple] = {}
    last_t, s = 0.0, sample
    while s is not None:
        ts = (s["timestamp"] - t0) / 1e6
        if ts > AGENT_HORIZON_S + 1e-3:
            break
        last_t = ts
        for ann_tok in s["anns"]:
            if ann_tok not in cache:
                a = nusc.get("sample_annotation", ann_tok)
                v = nusc.box_velocity(ann_tok)[:2]
                v = np.where(np.isfinite(v), v, 0.0)
                kind = agent_kind(a["category_name"])
                if kind == "static":
                    v = np.zeros(2)  # NAVSIM keeps no velocity for static objects
                cache[ann_tok] = (a["instance_token"], (a["translation"][0], a["translation"][1],
                                                        _yaw(a["rotation"]), v[0], v[1]),
                                  (a["size"][1], a["size"][0], kind))  # length, width (wlh)
            inst, state, size_kind = cache[ann_tok]
            tracks.setdefault(inst, []).append((ts,) + state)
            info.setdefault(inst, size_kind)
        s = nusc.get("sample", s["next"]) if s["next"] else None
    frames = int(np.floor(last_t / DT + 1e-6)) + 1
    tt = np.arange(frames) * DT
    ids = sorted(tracks)
    boxes = np.full((frames, len(ids), 5), np.nan)
    vel = np.full((frames, len(ids), 2), np.nan)
    for j, inst in enumerate(ids):
        st = np.asarray(tracks[inst], np.float64)
        length, width, _ = info[inst]
        if len(st) == 1:  # NAVSIM: an object seen once stays at every frame
            boxes[:, j] = (st[0, 1], st[0, 2], st[0, 3], length, width)
            vel[:, j] = st[0, 4:6]
            continue
        yaw = np.unwrap(st[:, 3])
        live = (tt >= st[0, 0] - 1e-9) & (tt <= st[-1, 0] + 1e-9)
        for c, col in ((0, 1), (1, 2)):
            boxes[live, j, c] = np.interp(tt[live], st[:, 0], st[:, col])
        boxes[live, j, 2] = (np.interp(tt[live], st[:, 0], yaw) + np.pi) % (2 * np.pi) - np.pi
        boxes[live, j, 3], boxes[live, j, 4] = length, width
        for c, col in ((0, 4), (1, 5)):
            vel[live, j, c] = np.interp(tt[live], st[:, 0], st[:, col])
    kinds = tuple(info[i][2] for i in ids)
    return boxes, vel, kinds


def logged_route(nusc, sample_token: str, heading: float) -> np.ndarray:
    """[M, 2] the logged ego path (keyframe ego poses, global) from ``sample_token`` to the scene's end, repeated
    points dropped, extended straight ``ROUTE_EXTENSION`` m past both ends."""
    pts, s = [], nusc.get("sample", sample_token)
    while s is not None:
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        pts.append(nusc.get("ego_pose", sd["ego_pose_token"])["translation"][:2])
        s = nusc.get("sample", s["next"]) if s["next"] else None
    pts = np.asarray(pts, np.float64)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-3])
    pts = pts[keep]
    start_dir = np.array([np.cos(heading), np.sin(heading)])
    end_dir = (pts[-1] - pts[-2]) / np.linalg.norm(pts[-1] - pts[-2]) if len(pts) > 1 else start_dir
    return np.concatenate([[pts[0] - ROUTE_EXTENSION * start_dir], pts, [pts[-1] + ROUTE_EXTENSION * end_dir]])


def _start_state(ego2global: np.ndarray, ego_state: np.ndarray):
    from odvla.platform.sim.vehicle import VehicleLimits, VehicleState, WHEELBASE

    f = dict(zip(EGO_STATE_FIELDS, ego_state))
    yaw = float(np.arctan2(ego2global[1, 0], ego2global[0, 0]))
    v = float(max(f["speed"], 0.0))
    steer = float(np.arctan(f["yaw_rate"] * WHEELBASE / v)) if v > 0.5 else 0.0
    lim = VehicleLimits()
    steer = float(np.clip(steer, -lim.max_steer, lim.max_steer))
    return VehicleState(float(ego2global[0, 3]), float(ego2global[1, 3]), yaw, v, steer), float(f["ax"])


def plan_inputs(scene: Scene, ego2global: np.ndarray, ego_state: np.ndarray, plan_ego: np.ndarray,
                best_progress_m: Optional[float] = None) -> PDMInputs:
    """The PDMInputs of one plan [6, 2] (ego frame, rear axle, m) driven from the keyframe's logged state."""
    from odvla.platform.sim.tracking import track_plan
    from odvla.platform.sim.vehicle import EGO_FORWARD_SHIFT, EGO_LENGTH, EGO_WIDTH

    start, a0 = _start_state(ego2global, ego_state)
    plan = np.asarray(plan_ego, np.float64).reshape(FUTURE_STEPS, 2)
    plan_global = plan @ ego2global[:2, :2].T + ego2global[:2, 3]
    trace = track_plan(start, plan_global, HORIZON_S, DT)
    pose = trace.pose.copy()
    pose[:, 0] += EGO_FORWARD_SHIFT * np.cos(pose[:, 2])
    pose[:, 1] += EGO_FORWARD_SHIFT * np.sin(pose[:, 2])
    # NAVSIM's state k carries the acceleration that produced it (state 0: the logged one)
    accel = np.concatenate([[a0], trace.accel[:-1]])
    return PDMInputs(t=trace.t, ego_pose=pose, ego_speed=trace.speed, ego_length=EGO_LENGTH, ego_width=EGO_WIDTH,
                     agent_boxes=scene.boxes, agent_velocity=scene.velocity, agent_kinds=scene.kinds,
                     drivable=scene.drivable, route=scene.route, best_progress_m=best_progress_m, ego_accel=accel,
                     rear_axle_offset_m=EGO_FORWARD_SHIFT, lanes=scene.lanes, intersections=scene.intersections)


def pdms_metrics(data, val, plans: Mapping[str, np.ndarray], nusc=None) -> tuple[dict, list[dict]]:
    """PDM figures of every method in ``plans`` (prefix -> [N, 6, 2] ego-frame plans in the row order of ``val``,
    NaN rows unscored; the logged expert is added as ``expert/``) on the val rows ``val`` (a pyarrow table with
    the shard columns), with the dataroot of ``data`` (``data.dataroot`` or the shards' manifest). Returns the
    figures and one row per (sample, method) with the sub-scores."""
    from odvla.platform.data.prepare import load_nuscenes

    dataroot, version = _dataroot_version(data)
    nusc = nusc or load_nuscenes(dataroot, version)
    rows = val.select(list(ROW_COLUMNS)).to_pylist()
    expert = np.asarray([r["future_traj"] for r in rows], np.float64).reshape(-1, FUTURE_STEPS, 2)
    full = np.asarray([r["future_mask"] for r in rows], np.float64).reshape(-1, FUTURE_STEPS).min(1) > 0
    methods = {**{k: np.asarray(v, np.float64).reshape(-1, FUTURE_STEPS, 2) for k, v in plans.items()},
               "expert/": expert}
    maps: dict[str, MapLayers] = {}
    ann_cache: dict = {}
    per: dict[str, list] = {k: [] for k in methods}
    records = []
    for i, r in enumerate(rows):
        if not full[i]:
            continue
        tok = r["sample_token"]
        sample = nusc.get("sample", tok)
        location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        if location not in maps:
            maps[location] = MapLayers(dataroot, location, tok)
        m = maps[location]
        e2g = np.asarray(r["ego2global"], np.float64).reshape(4, 4)
        ego_state = np.asarray(r["ego_state"], np.float64)
        drivable = m.near("drivable", e2g[0, 3], e2g[1, 3])
        if not drivable:
            raise ValueError(f"pdms: sample {tok}: map {location!r} has no drivable_area within {MAP_RADIUS:.0f} m "
                             f"of the ego at ({e2g[0, 3]:.1f}, {e2g[1, 3]:.1f})")
        boxes, vel, kinds = logged_agents(nusc, tok, ann_cache)
        scene = Scene(boxes, vel, kinds, shapely.union_all(drivable), tuple(m.near("lanes", e2g[0, 3], e2g[1, 3])),
                      shapely.union_all(m.near("intersections", e2g[0, 3], e2g[1, 3])),
                      logged_route(nusc, tok, float(np.arctan2(e2g[1, 0], e2g[0, 0]))))
        ref = score_pdm(plan_inputs(scene, e2g, ego_state, expert[i]))
        best = ref.progress_m * ref.nc * ref.dac
        for prefix, plan in methods.items():
            if not np.isfinite(plan[i]).all():
                continue
            res = ref if prefix == "expert/" else score_pdm(plan_inputs(scene, e2g, ego_state, plan[i], best))
            per[prefix].append(res.as_dict())
            records.append({"sample_token": tok, "method": prefix or "model", **res.as_dict(),
                            "progress_m": res.progress_m, "best_progress_m": res.best_progress_m})
    log.info("pdms: %d keyframes scored, %d without a complete 3-s logged future skipped", full.sum(), (~full).sum())
    out = {"pdms/skipped_short_future": float((~full).sum())}
    for prefix, results in per.items():
        out[f"{prefix}pdms/n"] = float(len(results))
        for k in SUBSCORES:
            out[f"{prefix}pdms/{k}"] = float(np.mean([r[k] for r in results])) if results else float("nan")
    return out, records


def pdms_table(metrics: Mapping[str, float]) -> list[str]:
    """Markdown lines of the "PDM score" table (none without ``pdms/`` figures)."""
    rows = [(name, p) for name, p in METHODS if f"{p}pdms/n" in metrics]
    if not rows:
        return []

    def fmt(v):
        return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"

    lines = ["## PDM score (NAVSIM, non-reactive on the logs)", "",
             "| method | n | PDMS | NC | DAC | TTC | EP | C |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in rows:
        lines.append(f"| {name} | {int(metrics[f'{p}pdms/n'])} | "
                     + " | ".join(fmt(metrics.get(f"{p}pdms/{k}")) for k in SUBSCORES) + " |")
    lines += ["", "PDMS = NC x DAC x (5 TTC + 5 EP + 2 C) / 12, each plan driven 3 s at 10 Hz against the logged "
              "agents; EP relative to the logged expert's safe progress (docs/evaluation.md, PDM score). "
              f"{int(metrics.get('pdms/skipped_short_future', 0))} keyframes without a complete 3-s future not "
              "scored.", ""]
    return lines


class LogPDMS:
    """The PDM score as an extra protocol of ``run_eval``: ``check`` before the model runs, ``score`` the plans,
    ``table`` for ``results.md``; per-sample rows go to ``<out>/pdms_samples.parquet``."""

    name = "pdms"
    columns = ROW_COLUMNS
    check_columns = ("sample_token", "log_location")

    def check(self, data, rows) -> None:
        check_maps(data, rows)

    def score(self, data, rows, plans: Mapping[str, np.ndarray]) -> tuple[dict, list[dict]]:
        return pdms_metrics(data, rows, plans)

    def table(self, metrics: Mapping[str, float]) -> list[str]:
        return pdms_table(metrics)


EXTRA_PROTOCOLS = {"pdms": LogPDMS}
"""Protocols beside the open-loop ones, by the name ``odvla eval --protocol`` and ``jobs/evaluate.py --protocol``
take."""


def extra_protocols(names) -> tuple:
    """The protocol objects ``run_eval(protocols=...)`` takes, for ``names`` (keys of ``EXTRA_PROTOCOLS``); an unknown
    name is an error naming the choices."""
    unknown = [n for n in names if n not in EXTRA_PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown evaluation protocol {unknown[0]!r}: expected one of {sorted(EXTRA_PROTOCOLS)}")
    return tuple(EXTRA_PROTOCOLS[n]() for n in dict.fromkeys(names))
