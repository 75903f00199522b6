"""Synthetic nuScenes: a dataroot the real devkit loads (``NuScenes``, ``NuScenesMap``), written from a seed.

Layout written under ``out``::

    v1.0-mini/*.json              the 13 nuScenes tables
    maps/expansion/boston-seaport.json, maps/<token>.png   map expansion (v1.3) and semantic prior
    samples/CAM_*/*.jpg, samples/LIDAR_TOP/*.pcd.bin        keyframe sensor data
    can_bus/scene-NNNN_<message>.json                      CAN bus expansion (``synth_canbus``: pose,
                                  steeranglefeedback, ms_imu, vehicle_monitor, route, meta) from the ego track the
                                  ego poses come from; none for scene numbers the devkit lists as having no CAN
                                  data (``NuScenesCanBus.can_blacklist``), as in nuScenes
    odvla_split.json              the scene split: the last ``val_count(scenes)`` scenes are 'val' (a quarter,
                                  rounded, at least one when there are two scenes or more)

Each scene: the ego drives a lane route of the town grid (``platform/world/road_map.py``) with turns, stops and
speed changes (``platform/world/motion.py``); agents move around it and are annotated at every keyframe (0.5 s)
while within ``ANNOTATION_RANGE`` m of the ego. Cameras trigger a few ms after the lidar, each with its own ego pose, as in
nuScenes. Deterministic for ``seed``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from odvla.model.constants import CAMERAS
from odvla.platform.world import render as rig
from odvla.platform.data.prepare import SPLIT_FILE, TABLES
from odvla.platform.data.synth_canbus import can_blacklist, write_can_bus
from odvla.platform.world.road_map import RoadGrid
from odvla.platform.world.motion import ego_track, agents_around
from odvla.platform.data.transforms import yaw_quat

VERSION = "v1.0-mini"
MAP_NAME = "boston-seaport"
KEYFRAME_US = 500_000
ANNOTATION_RANGE = 50.0
VAL_FRACTION = 0.25

CATEGORIES = [
    "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack",
    "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer",
    "vehicle.truck",
]
ATTRIBUTES = [
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
]
VISIBILITY = [("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100")]


def val_count(scenes: int) -> int:
    """How many of ``scenes`` synthetic scenes are validation scenes."""
    return 0 if scenes < 2 else max(1, int(round(scenes * VAL_FRACTION)))


def scene_split(index: int, scenes: int) -> str:
    """The split of the synthetic scene number ``index`` (0-based) of ``scenes``: the last ones are 'val'."""
    return "val" if index >= scenes - val_count(scenes) else "train"


def _tok(seed: int, *parts) -> str:
    return hashlib.md5("/".join(map(str, (seed,) + parts)).encode()).hexdigest()


def _visibility(dist: float) -> str:
    """Synthetic visibility level from range (no occlusion model): 4 near, 1 far."""
    return "4" if dist < 20 else "3" if dist < 30 else "2" if dist < 40 else "1"


@dataclass
class _Dataroot:
    """What the scenes of one synthetic dataroot share while it is written: the folder (``out.tmp``), the token
    seed, the image size (px), the camera rig and the nuScenes tables the scenes append their rows to."""

    tmp: Path
    seed: int
    W: int
    H: int
    channels: list
    """The six cameras, then LIDAR_TOP."""
    tables: dict
    """nuScenes table name -> its rows (``TABLES``)."""
    cat_tok: dict
    att_tok: dict
    sensor_tok: dict
    s2e: dict
    """Channel -> sensor2ego [4, 4] (the rig, identical in every scene)."""
    Ks: dict
    """Camera -> intrinsics [3, 3] at ``W`` x ``H``."""
    renderer: rig.Renderer
    renders: list = field(default_factory=list)
    """Camera images still to draw: (file path, cam2global [4, 4], intrinsics [3, 3], boxes), drawn after every
    scene's tables (``_render_all``), in parallel where the machine has cores for it."""


def write_synthetic(out, scenes: int = 6, keyframes: int = 40, seed: int = 0,
                    image_wh: tuple[int, int] = (400, 225), progress: bool = False,
                    scene_numbers: list[int] | None = None, can_bus: bool = True,
                    workers: int | None = None) -> Path:
    """Write a synthetic nuScenes ``v1.0-mini`` dataroot under ``out`` and return its path.

    ``scenes`` scenes of ``keyframes`` keyframes at 2 Hz; images ``image_wh`` (width, height) px. Scene ``i`` is
    named ``scene-NNNN`` with ``NNNN = scene_numbers[i]`` (default ``i + 1``; a number in the devkit's CAN
    blacklist, e.g. 161, gets no CAN bus files). ``can_bus=False`` writes no ``can_bus/`` folder. An existing
    ``out`` is replaced (the dataroot is written into ``out.tmp`` first and renamed, so an interrupted run never
    leaves a half dataroot behind at ``out``). ``workers``: processes that draw the camera images (default: the
    CPUs this process may use; 1 draws them in this process). Each image depends on its own pose and boxes only, so
    the dataroot is byte-identical for any ``workers``.
    """
    out = Path(out)
    numbers = _scene_numbers(scenes, keyframes, scene_numbers)
    no_can = can_blacklist() if can_bus else frozenset()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    grid = RoadGrid()
    map_token = _tok(seed, "map")
    root = _start_dataroot(tmp, seed, int(image_wh[0]), int(image_wh[1]), grid)
    grid.write(tmp, MAP_NAME, map_token)
    split = {"rule": f"the last {val_count(scenes)} of {scenes} scenes (fraction {VAL_FRACTION}) are val",
             "train": [], "val": []}
    log_tokens = []
    it = range(scenes)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="synth scenes", unit="scene")
    for si in it:
        name = f"scene-{numbers[si]:04d}"
        split[scene_split(si, scenes)].append(name)
        log_tokens.append(_write_scene(root, grid, si, name, keyframes, can_bus and numbers[si] not in no_can))
    _render_all(root.renderer, root.renders, workers)
    root.tables["map"].append({"token": map_token, "log_tokens": log_tokens, "category": "semantic_prior",
                               "filename": f"maps/{map_token}.png"})
    _write_tables(tmp, root.tables, split)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


PARALLEL_MIN_IMAGES = 240
"""Fewer camera images than this are drawn in this process (a pool costs more than it saves)."""

_RENDERER: rig.Renderer | None = None
"""The renderer a drawing process inherits (set before ``_render_all``'s pool forks)."""


def _draw(job) -> int:
    """Draw and write one image; returns the drawing process's id."""
    import os

    path, cam2global, K, boxes = job
    Path(path).write_bytes(_RENDERER.render(cam2global, K, boxes))
    return os.getpid()


def _fork_is_safe() -> bool:
    """Forking is safe here unless this process already runs Ray's threads (gRPC and Ray's core worker are not
    fork-safe). The drawing processes use NumPy and Pillow only, never torch's thread pool."""
    import multiprocessing as mp
    import sys

    ray = sys.modules.get("ray")
    return "fork" in mp.get_all_start_methods() and not (ray is not None and ray.is_initialized())


def _render_all(renderer: rig.Renderer, jobs: list, workers: int | None) -> set:
    """Draw and write every camera image of ``jobs`` (see ``_Dataroot.renders``): in ``workers`` forked processes
    (default: the CPUs this process may use), or here when that is 1, there are fewer than ``PARALLEL_MIN_IMAGES``
    or forking is not safe (``_fork_is_safe``). Drawing is Python and NumPy per image (about 15 ms at 400 x 225), so
    processes, not threads, share it out. Forked, not spawned: a spawned process would re-run the caller's main
    script. Returns the ids of the processes that drew."""
    import multiprocessing as mp
    import os

    global _RENDERER
    n = workers if workers is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    _RENDERER = renderer
    try:
        if n <= 1 or len(jobs) < PARALLEL_MIN_IMAGES or not _fork_is_safe():
            return {_draw(job) for job in jobs}
        with mp.get_context("fork").Pool(n) as pool:
            return set(pool.imap_unordered(_draw, jobs, chunksize=max(1, len(jobs) // (8 * n))))
    finally:
        _RENDERER = None


def _scene_numbers(scenes: int, keyframes: int, scene_numbers: list[int] | None) -> list[int]:
    """The ``NNNN`` of each scene's name ``scene-NNNN``, after checking the sizes (errors name the arguments)."""
    if scenes < 1 or keyframes < 2:
        raise ValueError(f"synth needs scenes >= 1 and keyframes >= 2 (got {scenes}, {keyframes})")
    numbers = list(range(1, scenes + 1)) if scene_numbers is None else [int(x) for x in scene_numbers]
    if len(numbers) != scenes or len(set(numbers)) != scenes or not all(1 <= x <= 9999 for x in numbers):
        raise ValueError(f"synth scene_numbers must be {scenes} distinct numbers in 1..9999, got {scene_numbers}")
    return numbers


def _start_dataroot(tmp: Path, seed: int, W: int, H: int, grid: RoadGrid) -> _Dataroot:
    """The tables every scene shares (category, attribute, visibility, sensor), the camera rig and the renderer;
    creates ``samples/<channel>/`` under ``tmp``."""
    tables: dict[str, list] = {k: [] for k in TABLES}
    cat_tok = {c: _tok(seed, "category", c) for c in CATEGORIES}
    tables["category"] = [{"token": cat_tok[c], "name": c, "description": c, "index": i}
                          for i, c in enumerate(CATEGORIES)]
    att_tok = {a: _tok(seed, "attribute", a) for a in ATTRIBUTES}
    tables["attribute"] = [{"token": att_tok[a], "name": a, "description": a} for a in ATTRIBUTES]
    tables["visibility"] = [{"token": t, "level": lvl, "description": f"visibility of whole object is {lvl}"}
                            for t, lvl in VISIBILITY]
    channels = list(CAMERAS) + ["LIDAR_TOP"]
    sensor_tok = {c: _tok(seed, "sensor", c) for c in channels}
    tables["sensor"] = [{"token": sensor_tok[c], "channel": c, "modality": "lidar" if c == "LIDAR_TOP" else "camera"}
                        for c in channels]
    s2e = {c: rig.camera_sensor2ego(c) for c in CAMERAS}
    s2e["LIDAR_TOP"] = rig.lidar_sensor2ego()
    Ks = {c: rig.intrinsics(c, W, H) for c in CAMERAS}
    renderer = rig.Renderer(W, H, grid.divider_polylines())
    for c in channels:
        (tmp / "samples" / c).mkdir(parents=True, exist_ok=True)
    return _Dataroot(tmp, seed, W, H, channels, tables, cat_tok, att_tok, sensor_tok, s2e, Ks, renderer)


def _write_scene(root: _Dataroot, grid: RoadGrid, si: int, name: str, keyframes: int, with_can_bus: bool) -> str:
    """Scene number ``si`` (0-based): its log, calibration, ego track and agents, CAN bus files (``with_can_bus``),
    annotations, keyframes and scene row. Draws from its own generator ``default_rng([seed, si])``. Returns the
    scene's log token."""
    seed, tables = root.seed, root.tables
    rng = np.random.default_rng([seed, si])
    log_tok, scene_tok = _tok(seed, "log", si), _tok(seed, "scene", si)
    tables["log"].append({"token": log_tok, "logfile": f"n008-synth-{seed}-{si:04d}", "vehicle": "n008",
                          "date_captured": "2018-08-01", "location": MAP_NAME})
    cs_tok = _calibrated_sensors(root, si)
    duration = (keyframes - 1) * KEYFRAME_US * 1e-6
    ego, info = ego_track(grid, rng, duration)
    agents = agents_around(grid, ego, rng, count=int(rng.integers(12, 20)))
    base_ts = 1_533_151_600_000_000 + si * 60_000_000
    if with_can_bus:
        write_can_bus(root.tmp, name, ego, base_ts, duration, info["route_points"])
    sample_toks = [_tok(seed, "sample", si, k) for k in range(keyframes)]
    kf_t = np.arange(keyframes) * KEYFRAME_US * 1e-6
    ego_xy_kf, _, _ = ego.at(kf_t)
    ann_range = _annotation_ranges(agents, ego_xy_kf, kf_t)
    _annotate_agents(root, si, agents, ann_range, ego_xy_kf, kf_t, sample_toks)
    _write_keyframes(root, si, name, ego, agents, ann_range, kf_t, sample_toks, scene_tok, base_ts, cs_tok, rng)
    tables["scene"].append({
        "token": scene_tok, "log_token": log_tok, "nbr_samples": keyframes,
        "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1], "name": name,
        "description": f"synthetic, seed {seed}: " + ", ".join(info["moves"][:3])
                       + f"; {info['stops']} stop(s)"})
    return log_tok


def _calibrated_sensors(root: _Dataroot, si: int) -> dict[str, str]:
    """One ``calibrated_sensor`` row per channel of scene ``si`` (the shared rig); returns channel -> its token."""
    from pyquaternion import Quaternion

    cs_tok = {c: _tok(root.seed, "calib", si, c) for c in root.channels}
    for c in root.channels:
        T = root.s2e[c]
        root.tables["calibrated_sensor"].append({
            "token": cs_tok[c], "sensor_token": root.sensor_tok[c], "translation": T[:3, 3].tolist(),
            "rotation": list(Quaternion(matrix=T[:3, :3]).elements),
            "camera_intrinsic": root.Ks[c].tolist() if c != "LIDAR_TOP" else []})
    return cs_tok


def _annotation_ranges(agents, ego_xy_kf: np.ndarray, kf_t: np.ndarray) -> list:
    """Per agent, the keyframes it is annotated at: ``(first, last)`` of those within ``ANNOTATION_RANGE`` m of the
    ego (the whole span between them), or None. ego_xy_kf [K, 2] global metres at the keyframe times kf_t [K] s."""
    ann_range = []
    for ag in agents:
        xy, _, _ = ag.track.at(kf_t)
        near = np.nonzero(np.linalg.norm(xy - ego_xy_kf, axis=1) < ANNOTATION_RANGE)[0]
        ann_range.append((near[0], near[-1]) if len(near) else None)
    return ann_range


def _annotate_agents(root: _Dataroot, si: int, agents, ann_range: list, ego_xy_kf: np.ndarray, kf_t: np.ndarray,
                     sample_toks: list[str]) -> None:
    """The ``instance`` row of every annotated agent of scene ``si`` and its ``sample_annotation`` rows (linked
    prev / next), with visibility and lidar point count from the range to the ego."""
    seed, tables = root.seed, root.tables
    for ai, ag in enumerate(agents):
        if ann_range[ai] is None:
            continue
        k0, k1 = ann_range[ai]
        inst = _tok(seed, "instance", si, ai)
        anns = [_tok(seed, "ann", si, ai, k) for k in range(k0, k1 + 1)]
        tables["instance"].append({"token": inst, "category_token": root.cat_tok[ag.category],
                                   "nbr_annotations": len(anns), "first_annotation_token": anns[0],
                                   "last_annotation_token": anns[-1]})
        xy, yaw, v = ag.track.at(kf_t[k0:k1 + 1])
        for j, k in enumerate(range(k0, k1 + 1)):
            dist = float(np.linalg.norm(xy[j] - ego_xy_kf[k]))
            tables["sample_annotation"].append({
                "token": anns[j], "sample_token": sample_toks[k], "instance_token": inst,
                "visibility_token": _visibility(dist), "attribute_tokens": _attributes(ag, float(v[j]), root.att_tok),
                "translation": [float(xy[j, 0]), float(xy[j, 1]), ag.wlh[2] / 2],
                "size": list(ag.wlh), "rotation": yaw_quat(float(yaw[j])),
                "prev": anns[j - 1] if j > 0 else "", "next": anns[j + 1] if j + 1 < len(anns) else "",
                "num_lidar_pts": int(max(1, 4000 / max(dist, 1.0) ** 1.5)), "num_radar_pts": 0})


def _attributes(ag, speed: float, att_tok: dict) -> list[str]:
    """Attribute tokens of an agent annotated at ``speed`` (m/s): parked for a car that never moves, else its moving
    or stopped attribute (moving above 0.2 m/s), none for a category without one."""
    if ag.category == "vehicle.car" and ag.track.v.max() == 0.0:
        return [att_tok["vehicle.parked"]]
    if ag.attribute_moving:
        return [att_tok[ag.attribute_moving if speed > 0.2 else ag.attribute_stopped]]
    return []


def _write_keyframes(root: _Dataroot, si: int, name: str, ego, agents, ann_range: list, kf_t: np.ndarray,
                     sample_toks: list[str], scene_tok: str, base_ts: int, cs_tok: dict,
                     rng: np.random.Generator) -> None:
    """The ``sample`` rows of scene ``si`` and, per keyframe and channel, its ego pose, its sensor file (JPEG or
    lidar points; the lidar's draw ``rng``) and its ``sample_data`` row; each channel's rows are linked prev / next
    and added after the scene's last keyframe."""
    tables, keyframes = root.tables, len(sample_toks)
    prev_sd = {c: "" for c in root.channels}
    sd_rows = {c: [] for c in root.channels}
    for k in range(keyframes):
        ts = base_ts + k * KEYFRAME_US
        tables["sample"].append({"token": sample_toks[k], "timestamp": ts, "scene_token": scene_tok,
                                 "prev": sample_toks[k - 1] if k else "",
                                 "next": sample_toks[k + 1] if k + 1 < keyframes else ""})
        boxes = _boxes_at(agents, ann_range, k, kf_t)
        for c in root.channels:
            pose_tok, t_us, fname, h, w = _sensor_frame(root, si, name, k, c, ts, ego, base_ts, boxes, rng)
            sd_tok = _tok(root.seed, "sd", si, k, c)
            sd_rows[c].append({
                "token": sd_tok, "sample_token": sample_toks[k], "ego_pose_token": pose_tok,
                "calibrated_sensor_token": cs_tok[c], "timestamp": t_us,
                "fileformat": "pcd" if c == "LIDAR_TOP" else "jpg", "is_key_frame": True, "height": h,
                "width": w, "filename": fname, "prev": prev_sd[c], "next": ""})
            if prev_sd[c]:
                sd_rows[c][-2]["next"] = sd_tok
            prev_sd[c] = sd_tok
    for c in root.channels:
        tables["sample_data"].extend(sd_rows[c])


def _boxes_at(agents, ann_range: list, k: int, kf_t: np.ndarray) -> list:
    """The agents annotated at keyframe ``k`` as ``(centre [3] global m, wlh [3] m, yaw rad, category)``, what the
    renderer and the lidar draw."""
    boxes = []
    for ai, ag in enumerate(agents):
        r = ann_range[ai]
        if r is None or not (r[0] <= k <= r[1]):
            continue
        xy, yaw, _ = ag.track.at(np.array([kf_t[k]]))
        boxes.append((np.array([xy[0, 0], xy[0, 1], ag.wlh[2] / 2]), ag.wlh, float(yaw[0]), ag.category))
    return boxes


def _sensor_frame(root: _Dataroot, si: int, name: str, k: int, c: str, ts: int, ego, base_ts: int, boxes: list,
                  rng: np.random.Generator) -> tuple[str, int, str, int, int]:
    """Channel ``c`` at keyframe ``k`` (lidar time ``ts`` us; a camera triggers its rig offset later): its
    ``ego_pose`` row and its sensor file. Returns (ego pose token, timestamp us, file name, height px, width px;
    0 x 0 for the lidar) for its ``sample_data`` row."""
    off = rig.RIG[c][3] if c != "LIDAR_TOP" else 0
    t_us = ts + off
    exy, eyaw, _ = ego.at(np.array([(t_us - base_ts) * 1e-6]))
    pose_tok = _tok(root.seed, "pose", si, k, c)
    root.tables["ego_pose"].append({"token": pose_tok, "timestamp": t_us, "rotation": yaw_quat(float(eyaw[0])),
                                    "translation": [float(exy[0, 0]), float(exy[0, 1]), 0.0]})
    E = np.eye(4)
    E[:3, :3] = rig.rot_z(np.rad2deg(eyaw[0]))
    E[:3, 3] = [exy[0, 0], exy[0, 1], 0.0]
    if c == "LIDAR_TOP":
        fname = f"samples/{c}/{name}__{c}__{t_us}.pcd.bin"
        _write_lidar(root.tmp / fname, E @ root.s2e[c], boxes, rng)
        h = w = 0
    else:
        fname = f"samples/{c}/{name}__{c}__{t_us}.jpg"
        root.renders.append((root.tmp / fname, E @ root.s2e[c], root.Ks[c], boxes))
        h, w = root.H, root.W
    return pose_tok, t_us, fname, h, w


def _write_tables(tmp: Path, tables: dict, split: dict) -> None:
    """``<tmp>/v1.0-mini/<table>.json`` for every table and ``<tmp>/odvla_split.json``."""
    (tmp / VERSION).mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (tmp / VERSION / f"{name}.json").write_text(json.dumps(rows))
    (tmp / SPLIT_FILE).write_text(json.dumps(split, indent=1))


def _write_lidar(path: Path, lidar2global: np.ndarray, boxes, rng: np.random.Generator) -> None:
    """A sparse point cloud (x, y, z, intensity, ring; float32) in the lidar frame: a ground ring plus points on
    each box's surface, enough for the devkit's point-cloud loaders and renderers."""
    ang = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    pts = [np.stack([np.cos(ang) * r, np.sin(ang) * r, np.zeros_like(ang)], -1) + [0, 0, -1.84]
           for r in (5.0, 10.0, 20.0)]
    inv = np.linalg.inv(lidar2global)
    for centre, wlh, yaw, _ in boxes:
        local = (rng.random((24, 3)) - 0.5) * np.array([wlh[1], wlh[0], wlh[2]])
        g = local @ rig.rot_z(np.rad2deg(yaw)).T + centre
        pts.append(g @ inv[:3, :3].T + inv[:3, 3])
    p = np.concatenate(pts)
    arr = np.concatenate([p, np.full((len(p), 1), 10.0), np.zeros((len(p), 1))], 1).astype(np.float32)
    arr.tofile(path)
