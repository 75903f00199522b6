"""One shard record per nuScenes keyframe, built with the devkit (see ``shard_schema`` for fields and frames).

Rules (documented here because the model learns from them):

- Ego frame of a keyframe = the ego pose of its LIDAR_TOP sample_data (nuScenes convention): x forward, y left.
- ``past_traj`` / ``future_traj``: ego positions of the 4 previous / 6 next keyframes of the scene (0.5 s apart),
  in the current ego frame; masks are 0 where the scene has no such keyframe.
- ``ego_state``: from the CAN bus when the dataroot has it (pose: vel, accel, rotation_rate; steering from
  steeranglefeedback; the last message at or before the keyframe). Otherwise from the keyframe ego poses using
  only the past: velocity = displacement since the previous keyframe / dt, acceleration = change of that
  velocity / dt, yaw rate = yaw change / dt, all in the current ego frame; at a scene's first keyframe the
  velocity and yaw rate use the next keyframe and the acceleration is 0; steering 0.
- ``vad_ego``: the ego state the released OpenDriveVLA prompt reads (``model/prompt_released.py``), VAD's
  ``gt_ego_lcf_feat`` as hustvl/VAD's ``tools/data_converter/vad_nuscenes_converter.py`` computes it
  (:func:`vad_ego_states`): velocity and yaw rate from the keyframe ego poses, CAN ``pose`` acceleration, CAN
  speed and steering, VAD's fallbacks for a scene without CAN data.
- ``command`` (:func:`command_from_future`): lateral offset ``y`` of the last valid future waypoint (3 s when
  available): ``y > 2 m`` -> turn left, ``y < -2 m`` -> turn right, else keep forward (as the reference, which
  thresholds the 3 s lateral offset at 2 m).
- Agents: every sample_annotation of the keyframe, boxes moved into the ego frame; velocity from
  ``NuScenes.box_velocity`` rotated into the ego frame (0 where the devkit cannot estimate it); futures from the
  instance's annotations at the next 6 keyframes (centres and yaws). ``future_boxes``: every annotation of the next
  6 keyframes. ``lidar2ego``: the keyframe's LIDAR_TOP calibration (the evaluation moves into UniAD's / VAD's LiDAR
  planning frame with it); ``agent_num_pts``: lidar + radar points per box (VAD's ``valid_flag``).
- Map: ``map_polylines.MapIndex`` around the ego pose, ``map_range`` = (half length along x, half width along y).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from odvla.model.constants import CAMERAS, COMMANDS, DETECTION_CLASSES, FUTURE_STEPS, PAST_STEPS
from odvla.platform.data.errors import CorruptImageError, MissingImageError
from odvla.platform.data.transforms import invert, pose_matrix, quat_yaw, wrap_angle

COMMAND_THRESHOLD = 2.0  # metres of lateral offset


def command_from_future(future_traj: np.ndarray, future_mask: np.ndarray, threshold: float = COMMAND_THRESHOLD
                        ) -> int:
    """COMMANDS index from the future ego waypoints ``[6,2]`` (ego frame) and their mask ``[6]``."""
    valid = np.nonzero(np.asarray(future_mask) > 0)[0]
    if len(valid) == 0:
        return COMMANDS.index("keep forward")
    y = float(future_traj[valid[-1], 1])
    if y > threshold:
        return COMMANDS.index("turn left")
    if y < -threshold:
        return COMMANDS.index("turn right")
    return COMMANDS.index("keep forward")


def detection_class(category: str) -> int:
    from nuscenes.eval.detection.utils import category_to_detection_name

    name = category_to_detection_name(category)
    return DETECTION_CLASSES.index(name) if name is not None else -1


def check_jpeg(path: str, sample_token: str) -> None:
    """Cheap integrity check of a camera file: exists, starts with the JPEG SOI and ends with EOI markers."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise MissingImageError("camera image not found", sample_token=sample_token, path=path) from None
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(max(size - 2, 0))
        tail = f.read(2)
    if head != b"\xff\xd8" or tail != b"\xff\xd9":
        raise CorruptImageError("camera image is not a complete JPEG", sample_token=sample_token, path=path)


class _Ann:
    """The annotations of one keyframe as global-frame arrays."""

    def __init__(self, nusc, sample):
        anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
        self.tokens = [a["token"] for a in anns]
        self.instance = [a["instance_token"] for a in anns]
        self.category = [a["category_name"] for a in anns]
        self.cls = np.array([detection_class(c) for c in self.category], dtype=np.int8)
        self.vis = np.array([int(a["visibility_token"] or 0) for a in anns], dtype=np.int8)
        self.num_pts = np.array([int(a.get("num_lidar_pts", 0) or 0) + int(a.get("num_radar_pts", 0) or 0)
                                 for a in anns], dtype=np.int32)  # VAD's valid_flag: > 0
        self.centre = np.array([a["translation"] for a in anns], dtype=np.float64).reshape(-1, 3)
        self.wlh = np.array([a["size"] for a in anns], dtype=np.float64).reshape(-1, 3)
        self.yaw = np.array([quat_yaw(a["rotation"]) for a in anns], dtype=np.float64)
        vel = np.array([nusc.box_velocity(t)[:3] for t in self.tokens], dtype=np.float64).reshape(-1, 3)
        self.vel = np.nan_to_num(vel, nan=0.0)
        self.by_instance = {inst: i for i, inst in enumerate(self.instance)}


def _to_ego(pts: np.ndarray, g2e: np.ndarray) -> np.ndarray:
    return pts @ g2e[:3, :3].T + g2e[:3, 3]


class CanBusError(ValueError):
    """A CAN bus expansion file that exists for a scene but cannot be used (names the scene and the file)."""


class CanBus:
    """Optional CAN-bus ego state (real nuScenes ``can_bus/`` expansion)."""

    def __init__(self, dataroot: str):
        self.api = None
        if (Path(dataroot) / "can_bus").is_dir():
            from nuscenes.can_bus.can_bus_api import NuScenesCanBus

            self.api = NuScenesCanBus(dataroot=dataroot)

    def has_scene(self, scene_name: str) -> bool:
        """False only in the devkit's "no CAN data for this scene" case: its ``can_blacklist`` (the scenes whose
        logs have no CAN bus, e.g. scene-0161..0176, 0309..0314), which ``get_messages`` refuses."""
        try:
            scene_id = int(scene_name[-4:])
        except ValueError:
            raise CanBusError(f"scene name {scene_name!r} is not scene-NNNN, the CAN bus expansion cannot be "
                              f"read for it") from None
        return scene_id not in self.api.can_blacklist

    def scene_messages(self, scene_name: str):
        """(pose, steeranglefeedback) messages of a scene; None when the dataroot has no ``can_bus/`` or the devkit
        has no CAN data for the scene (the caller falls back to ego poses and counts it). Any other problem (a
        missing, unreadable or empty message file) is a :class:`CanBusError` naming the scene and file."""
        if self.api is None or not self.has_scene(scene_name):
            return None
        out = []
        for message in ("pose", "steeranglefeedback"):
            path = Path(self.api.can_dir) / f"{scene_name}_{message}.json"
            try:
                out.append(self.api.get_messages(scene_name, message, print_warnings=False))
            except (OSError, ValueError, AssertionError) as e:
                raise CanBusError(f"CAN bus {message} messages of {scene_name} unreadable at {path}: "
                                  f"{type(e).__name__}: {e}") from e
            if not out[-1]:
                raise CanBusError(f"CAN bus {message} messages of {scene_name} are empty ({path})")
        return tuple(out)

    @staticmethod
    def state(msgs, utime: int) -> np.ndarray | None:
        pose, steer = msgs
        times = np.array([m["utime"] for m in pose])
        i = int(np.searchsorted(times, utime, side="right")) - 1
        if i < 0:
            return None
        m = pose[i]
        vx, vy = m["vel"][0], m["vel"][1]
        ax, ay = m["accel"][0], m["accel"][1]
        steering = 0.0
        if steer:
            st = np.array([s["utime"] for s in steer])
            j = int(np.searchsorted(st, utime, side="right")) - 1
            steering = float(steer[max(j, 0)]["value"])
        return np.array([vx, vy, ax, ay, m["rotation_rate"][2], np.hypot(vx, vy), steering], dtype=np.float32)


def vad_yaw(rotation) -> float:
    """VAD's ``quart_to_rpy(rotation)[2]`` of a nuScenes quaternion ``[w, x, y, z]``. VAD unpacks the list as
    ``(x, y, z, w)``, so the angle it calls yaw is the pose's *roll* about the vehicle's x axis (close to 0 for a
    car on a road; exactly 0 for planar poses). Reproduced as is: it is what VAD's cached info, and so the released
    prompt's "Velocity" and "Heading Angular Velocity", hold."""
    a, b, c, d = (float(v) for v in rotation)  # VAD's x, y, z, w
    return float(np.arctan2(2.0 * (d * c + a * b), 1.0 - 2.0 * (c * c + b * b)))


def nearest_message(utimes, utime: int) -> int:
    """Index of the message nearest ``utime`` (VAD's ``locate_message``: a tie goes to the later message)."""
    utimes = np.asarray(utimes)
    i = int(np.searchsorted(utimes, utime))
    if i == len(utimes) or (i > 0 and utime - utimes[i - 1] < utimes[i] - utime):
        i -= 1
    return i


def vad_ego_states(ego: np.ndarray, rotations, lidar2ego: np.ndarray, ts, msgs, location: str) -> np.ndarray:
    """``vad_ego`` [n, 7] (``VAD_EGO_FIELDS``: vx, vy m/s, can_ax, can_ay m/s^2, yaw_rate rad/s, v0 m/s, kappa)
    of a scene's ``n`` keyframes, as VAD's nuScenes converter defines ``gt_ego_lcf_feat[[0, 1, 2, 3, 4, 7, 8]]``.

    ``ego`` [n, 4, 4] keyframe (LIDAR_TOP) ego2global, ``rotations`` [n] their ego_pose quaternions [w,x,y,z],
    ``lidar2ego`` [n, 4, 4], ``ts`` [n] keyframe timestamps (us), ``msgs`` = (pose, steeranglefeedback) CAN
    messages or None (no CAN data for the scene), ``location`` the log's map (steering flips sign in Singapore).

    - ``v`` = |xy displacement from the previous keyframe| / 0.5 s (to the next one at a scene's start);
      ``yaw_rate`` = (:func:`vad_yaw` - its previous value) / 0.5 s (next - current at the start), not wrapped;
      ``(vx, vy) = v * (cos(yaw + pi/2), sin(yaw + pi/2))`` with ``yaw`` = :func:`vad_yaw`.
    - ``can_ax, can_ay`` = ``accel[0:2]`` of the first CAN ``pose`` message after the keyframe (the last message
      when none is after; VAD's loop reads its loop variable, not the message it kept), 0 without CAN data.
    - ``v0`` = ``vel[0]`` of the CAN ``pose`` message nearest the keyframe; without CAN data the xy length of the
      LiDAR's displacement from the previous to the next keyframe in the current LiDAR frame (VAD's
      ``his_diff[-1] + fut_diff[0]``, metres over 1 s; a missing previous keyframe repeats the next step, a
      missing next one adds 0, as VAD extrapolates).
    - ``kappa`` = ``2 * steering / 2.588`` of the nearest ``steeranglefeedback`` (sign flipped in Singapore),
      0 without CAN data.
    """
    n = len(ego)
    pos = ego[:, :3, 3]
    vyaw = np.array([vad_yaw(q) for q in rotations])
    lidar = np.einsum("nij,njk->nik", ego, lidar2ego)  # LiDAR -> global
    out = np.zeros((n, 7))
    if msgs:
        pose, steer = msgs
        pose_t = np.array([m["utime"] for m in pose])
        steer_t = np.array([m["utime"] for m in steer])
    for k in range(n):
        a, b = (k - 1, k) if k > 0 else (k, k + 1)
        if b < n:
            v = float(np.linalg.norm(pos[b, :2] - pos[a, :2])) / 0.5
            w = (vyaw[b] - vyaw[a]) / 0.5
        else:  # a one-keyframe scene (VAD asserts): at rest
            v = w = 0.0
        out[k, 0:2] = v * np.cos(vyaw[k] + np.pi / 2), v * np.sin(vyaw[k] + np.pi / 2)
        out[k, 4] = w
        if msgs:
            after = int(np.searchsorted(pose_t, ts[k], side="right"))
            out[k, 2:4] = pose[min(after, len(pose) - 1)]["accel"][:2]
            out[k, 5] = pose[nearest_message(pose_t, ts[k])]["vel"][0]
            steering = float(steer[nearest_message(steer_t, ts[k])]["value"])
            out[k, 6] = 2.0 * (-steering if location.startswith("singapore") else steering) / 2.588
        else:
            nxt = lidar[k + 1, :3, 3] - lidar[k, :3, 3] if k + 1 < n else np.zeros(3)
            prv = lidar[k, :3, 3] - lidar[k - 1, :3, 3] if k > 0 else nxt
            d = lidar[k, :3, :3].T @ (prv + nxt)
            out[k, 5] = float(np.hypot(d[0], d[1]))
    return out


def scene_records(nusc, scene_token: str, split: str, map_index, dataroot: str, can: CanBus | None = None,
                  map_range: tuple[float, float] = (30.0, 15.0), check_images: bool = True) -> tuple[list, dict]:
    """Records (dicts of SCHEMA columns, arrays flattened) of every keyframe of a scene, and scene notes."""
    scene = nusc.get("scene", scene_token)
    log = nusc.get("log", scene["log_token"])
    samples = _scene_samples(nusc, scene)
    ego, lidar2ego, rotations = _keyframe_poses(nusc, samples)
    pos = ego[:, :3, 3]
    yaw = np.array([np.arctan2(E[1, 0], E[0, 0]) for E in ego])
    ts = np.array([s["timestamp"] for s in samples], dtype=np.int64)
    anns = [_Ann(nusc, s) for s in samples]
    msgs = can.scene_messages(scene["name"]) if can is not None else None
    notes = {"scene": scene["name"], "ego_state_source": "can_bus" if msgs else "ego_pose"}
    vad_ego = vad_ego_states(ego, rotations, np.array(lidar2ego), ts, msgs, log["location"])
    vel, yawrate = _pose_velocities(pos, yaw, ts)
    records = []
    for k, s in enumerate(samples):
        E = ego[k]
        g2e = invert(E)
        state = _ego_state(msgs, ts, k, E[:3, :3], vel, yawrate)
        past, past_mask = _past_waypoints(pos, k, g2e)
        fut, fut_yaw, fut_mask = _future_waypoints(pos, yaw, k, g2e)
        command = command_from_future(fut, fut_mask)
        cameras = _camera_columns(nusc, s, dataroot, check_images)
        agents = _agent_columns(anns, k, g2e, yaw[k])
        elems = map_index.polylines(float(E[0, 3]), float(E[1, 3]), float(yaw[k]), *map_range) if map_index else []
        records.append({
            "sample_token": s["token"], "scene_token": scene_token, "scene_name": scene["name"],
            "log_location": log["location"], "timestamp": int(ts[k]), "frame_index": k, "split": split,
            "prev_sample_token": s["prev"],
            **cameras, "ego2global": _flat(E), "lidar2ego": _flat(lidar2ego[k]),
            "ego_state": _flat(state), "vad_ego": _flat(vad_ego[k]), "command": command, "past_traj": _flat(past),
            "past_mask": _flat(past_mask),
            "future_traj": _flat(fut), "future_yaw": _flat(fut_yaw), "future_mask": _flat(fut_mask),
            **agents,
            "map_points": _flat(np.concatenate([p for _, p in elems])) if elems else [],
            "map_lengths": [len(p) for _, p in elems], "map_class": [c for c, _ in elems],
        })
    return records, notes


def _scene_samples(nusc, scene: dict) -> list[dict]:
    """The scene's keyframes (``sample`` rows) in time order, following the ``next`` links."""
    samples = []
    tok = scene["first_sample_token"]
    while tok:
        s = nusc.get("sample", tok)
        samples.append(s)
        tok = s["next"]
    return samples


def _keyframe_poses(nusc, samples: list[dict]) -> tuple[np.ndarray, list, list]:
    """Per keyframe, from its LIDAR_TOP sample_data: ego2global [n, 4, 4] (the ego pose), LIDAR_TOP -> ego [4, 4]
    (the planning frame of UniAD / VAD) and the ego_pose quaternion [w, x, y, z] as stored (VAD's ego yaw reads it)."""
    ego = []
    lidar2ego = []
    rotations = []
    for s in samples:
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        ego.append(pose_matrix(pose["rotation"], pose["translation"]))
        rotations.append(pose["rotation"])
        lcs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        lidar2ego.append(pose_matrix(lcs["rotation"], lcs["translation"]))
    return np.array(ego), lidar2ego, rotations


def _pose_velocities(pos: np.ndarray, yaw: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ego velocity [n, 3] (global frame, m/s) and yaw rate [n] (rad/s) of each keyframe from the previous pose
    (from the next one at the first keyframe; 0 for a one-keyframe scene). pos [n, 3] m, yaw [n] rad, ts [n] us."""
    n = len(pos)
    vel = np.zeros((n, 3))
    yawrate = np.zeros(n)
    for k in range(n):
        a, b = (k - 1, k) if k > 0 else (0, min(1, n - 1))
        dt = max((ts[b] - ts[a]) * 1e-6, 1e-6)
        if a != b:
            vel[k] = (pos[b] - pos[a]) / dt
            yawrate[k] = wrap_angle(yaw[b] - yaw[a]) / dt
    return vel, yawrate


def _ego_state(msgs, ts: np.ndarray, k: int, R: np.ndarray, vel: np.ndarray, yawrate: np.ndarray) -> np.ndarray:
    """``ego_state`` [7] float32 of keyframe ``k``: from the CAN bus when ``msgs`` has a message at or before it,
    else from the poses (velocity and its change since the previous keyframe, rotated into the ego frame by the
    keyframe's ego2global rotation ``R`` [3, 3]; steering 0)."""
    state = CanBus.state(msgs, int(ts[k])) if msgs else None
    if state is not None:
        return state
    v_ego = R.T @ vel[k]
    if k >= 1:
        dt = max((ts[k] - ts[k - 1]) * 1e-6, 1e-6)
        acc = R.T @ (vel[k] - vel[k - 1]) / dt
    else:
        acc = np.zeros(3)
    return np.array([v_ego[0], v_ego[1], acc[0], acc[1], yawrate[k], np.linalg.norm(v_ego[:2]), 0.0],
                    dtype=np.float32)


def _past_waypoints(pos: np.ndarray, k: int, g2e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ego positions of the ``PAST_STEPS`` keyframes before ``k`` in its ego frame: [4, 2] m and mask [4]."""
    past = np.zeros((PAST_STEPS, 2))
    past_mask = np.zeros(PAST_STEPS)
    for i in range(PAST_STEPS):
        j = k - PAST_STEPS + i
        if j >= 0:
            past[i] = _to_ego(pos[j], g2e)[:2]
            past_mask[i] = 1
    return past, past_mask


def _future_waypoints(pos: np.ndarray, yaw: np.ndarray, k: int, g2e: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ego positions [6, 2] m and yaws [6] rad (relative to keyframe ``k``) of the ``FUTURE_STEPS`` keyframes after
    ``k`` in its ego frame, and their mask [6]."""
    fut = np.zeros((FUTURE_STEPS, 2))
    fut_yaw = np.zeros(FUTURE_STEPS)
    fut_mask = np.zeros(FUTURE_STEPS)
    for i in range(FUTURE_STEPS):
        j = k + 1 + i
        if j < len(pos):
            fut[i] = _to_ego(pos[j], g2e)[:2]
            fut_yaw[i] = wrap_angle(yaw[j] - yaw[k])
            fut_mask[i] = 1
    return fut, fut_yaw, fut_mask


def _camera_columns(nusc, sample: dict, dataroot: str, check_images: bool) -> dict:
    """The camera columns of a keyframe (``cam_paths``, ``cam_intrinsics``, ``cam_sensor2ego``, ``cam_ego2global``,
    ``image_hw``), cameras in ``CAMERAS`` order, each with its own ego pose. A missing camera, or with
    ``check_images`` a missing or truncated JPEG, is an error naming the sample (and file)."""
    paths, Ks, s2es, e2gs = [], [], [], []
    hw = None
    for cam in CAMERAS:
        if cam not in sample["data"]:
            raise MissingImageError(f"sample has no {cam} sample_data", sample_token=sample["token"])
        sd = nusc.get("sample_data", sample["data"][cam])
        full = os.path.join(dataroot, sd["filename"])
        if check_images:
            check_jpeg(full, sample["token"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        paths.append(sd["filename"])
        Ks.append(np.asarray(cs["camera_intrinsic"], dtype=np.float64))
        s2es.append(pose_matrix(cs["rotation"], cs["translation"]))
        e2gs.append(pose_matrix(pose["rotation"], pose["translation"]))
        if hw is None:
            hw = [int(sd["height"]), int(sd["width"])]
    return {"cam_paths": paths, "cam_intrinsics": _flat(Ks), "cam_sensor2ego": _flat(s2es),
            "cam_ego2global": _flat(e2gs), "image_hw": hw}


def _agent_columns(anns: list, k: int, g2e: np.ndarray, ego_yaw: float) -> dict:
    """The agent columns of keyframe ``k`` in its ego frame (``g2e`` global -> ego, ``ego_yaw`` rad): its
    annotations as boxes (centre, wlh, yaw, velocity), their futures at the next 6 keyframes (centre, yaw, mask, by
    instance) and every annotated box of those keyframes (``future_boxes`` and its step / class / visibility)."""
    n = len(anns)
    A = anns[k]
    centre = _to_ego(A.centre, g2e) if len(A.tokens) else np.zeros((0, 3))
    ayaw = wrap_angle(A.yaw - ego_yaw)
    avel = (A.vel @ g2e[:3, :3].T)[:, :2] if len(A.tokens) else np.zeros((0, 2))
    boxes = np.concatenate([centre, A.wlh, ayaw[:, None], avel], 1) if len(A.tokens) else np.zeros((0, 9))
    a_fut = np.zeros((len(A.tokens), FUTURE_STEPS, 2))
    a_fut_mask = np.zeros((len(A.tokens), FUTURE_STEPS))
    a_fut_yaw = np.zeros((len(A.tokens), FUTURE_STEPS))
    fb, fb_step, fb_cls, fb_vis = [], [], [], []
    for i in range(FUTURE_STEPS):
        j = k + 1 + i
        if j >= n:
            break
        F = anns[j]
        if not len(F.tokens):
            continue
        fc = _to_ego(F.centre, g2e)
        for ai, inst in enumerate(A.instance):
            fi = F.by_instance.get(inst)
            if fi is not None:
                a_fut[ai, i] = fc[fi, :2]
                a_fut_yaw[ai, i] = wrap_angle(F.yaw[fi] - ego_yaw)
                a_fut_mask[ai, i] = 1
        fb.append(np.concatenate([fc[:, :2], F.wlh[:, :2], wrap_angle(F.yaw - ego_yaw)[:, None]], 1))
        fb_step.append(np.full(len(F.tokens), i, dtype=np.int8))
        fb_cls.append(F.cls)
        fb_vis.append(F.vis)
    fb = np.concatenate(fb) if fb else np.zeros((0, 5))
    return {
        "agent_boxes": _flat(boxes), "agent_class": A.cls.tolist(), "agent_category": list(A.category),
        "agent_instance": list(A.instance), "agent_visibility": A.vis.tolist(),
        "agent_future": _flat(a_fut), "agent_future_mask": _flat(a_fut_mask),
        "agent_future_yaw": _flat(a_fut_yaw), "agent_num_pts": A.num_pts.tolist(),
        "future_boxes": _flat(fb), "future_box_step": np.concatenate(fb_step).tolist() if fb_step else [],
        "future_box_class": np.concatenate(fb_cls).tolist() if fb_cls else [],
        "future_box_visibility": np.concatenate(fb_vis).tolist() if fb_vis else [],
    }


def _flat(a) -> list[float]:
    return np.asarray(a, dtype=np.float32).ravel().tolist()

