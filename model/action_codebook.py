"""Action codebook: 0.5-s ego motion segments found by clustering, one trajectory token per segment.

An entry is one motion ``(dx, dy, dyaw)`` in the frame of the previous pose (nuScenes ego convention: x forward,
y left, metres; yaw counter-clockwise, radians). A trajectory of 6 waypoints is 6 entries chained from the ego pose
(the origin, heading 0): pose_i = pose_{i-1} composed with entry_i.

**Headings.** The shards' trajectories are positions; a pose's heading is estimated from them
(:func:`headings_from_positions`: the direction of the chord through the neighbouring waypoints, the last point's
incoming segment, the previous heading when the ego moves less than ``STILL_M``). The same estimate serves fitting and
encoding, so the codebook is fitted on the motions the encoder asks for.

**Distance.** As SMART's K-disk clustering (``rainmaker22/SMART``, ``scripts/traj_clstering.py``: ``Kdisk_cluster``,
``cal_polygon_contour``), two motions are compared through the contour of a vehicle box placed at their end pose
(four corners of a ``VEHICLE_LENGTH`` x ``VEHICLE_WIDTH`` box, the reference's 'veh' size for 0.5-s tokens): the
distance is the root mean square of the four corner distances (``sum((X - x0)**2) / 4 <= tol**2`` in the reference).

**Fitting** (:func:`fit_codebook`) on the train split's ego futures and histories:

- ``kdisk``: the reference's K-disk: draw a random remaining segment, make the mean motion of every remaining segment
  within ``tolerance`` (0.05 m, the reference's vehicle tolerance) an entry (the reference's ``cal_mean_heading``
  branch), remove them, repeat until ``size`` entries. Where the data runs out first (a small split), the tolerance
  halves and the draw continues over the segments farther than it from every entry (an extension: the reference
  assumes a million segments). The reference also skips draws whose first corner lies outside a box of -10..50 m x
  -10..10 m; a 0.5-s ego motion never does, so that test is left out.
- ``kmeans``: k-means (``scipy.cluster.vq.kmeans2``, k-means++ seeding) on the same 8-number contours; an entry is the
  mean motion of its members; an empty cluster takes the segment worst represented by the others.
- ``auto``: both, and the one with the smaller mean round-trip error on the fitting trajectories is kept.

**Encoding** (:meth:`ActionCodebook.encode_poses`) is closed-loop: entries are chained from the pose decoded so far
and scored against the target poses by the same contour distance, with a small beam (``BEAM`` sequences) over the
six steps, so quantisation errors do not accumulate. A target motion outside the codebook's range (the box of its
entries, ``tolerance`` wider) still gets the nearest entry, and is counted (``EncodeResult.out_of_range``), never
silently.

**File** (:meth:`ActionCodebook.save`, :func:`load_codebook`): JSON ``{"format", "size", "entries": [[dx, dy, dyaw],
...], "tolerance_m", "method", "seed", "vehicle": [length, width], "fit": {...}}``. A missing, corrupt or wrong-size
file is a :class:`CodebookError` naming the file.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

CODEBOOK_FORMAT = 1
CODEBOOK_FILE = "action_codebook.json"
"""File name beside the shards and inside an export's tokenizer folder."""
VEHICLE_LENGTH, VEHICLE_WIDTH = 4.8, 2.0
"""Box of the contour distance (metres): SMART's 'veh' size for tokens of more than 0.2 s."""
TOLERANCE_M = 0.05
"""K-disk radius (contour RMS, metres): SMART's vehicle tolerance."""
STILL_M = 0.2
"""A chord shorter than this (metres) keeps the previous heading (a standing ego has no direction of travel)."""
METHODS = ("auto", "kdisk", "kmeans")
BEAM = 8
"""Sequences kept by the encoder's beam search (:meth:`ActionCodebook.encode_poses`)."""


class CodebookError(ValueError):
    """A codebook file that is missing, corrupt, of the wrong size, or differs from another (names the files)."""


# ---------------------------------------------------------------------------------------------------- geometry
def wrap_angle(a):
    """Angles (rad) wrapped to [-pi, pi)."""
    return (np.asarray(a, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def contour(pose: np.ndarray, length: float = VEHICLE_LENGTH, width: float = VEHICLE_WIDTH) -> np.ndarray:
    """[..., 3] poses (x, y, yaw) -> [..., 4, 2] box corners: left-front, right-front, right-back, left-back (the
    order of the reference's ``cal_polygon_contour``)."""
    p = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(p[..., 2]), np.sin(p[..., 2])
    fx, fy = 0.5 * length * c, 0.5 * length * s  # half length along the heading
    lx, ly = -0.5 * width * s, 0.5 * width * c  # half width to the left
    x, y = p[..., 0], p[..., 1]
    corners = [(x + fx + lx, y + fy + ly), (x + fx - lx, y + fy - ly), (x - fx - lx, y - fy - ly),
               (x - fx + lx, y - fy + ly)]
    return np.stack([np.stack(cn, -1) for cn in corners], -2)


def compose(pose: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """[..., 3] pose and [..., 3] motion in that pose's frame -> [..., 3] the pose after the motion."""
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    return np.stack([pose[..., 0] + c * motion[..., 0] - s * motion[..., 1],
                     pose[..., 1] + s * motion[..., 0] + c * motion[..., 1],
                     wrap_angle(pose[..., 2] + motion[..., 2])], -1)


def relative(pose: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[..., 3] poses -> [..., 3] ``target`` in the frame of ``pose`` (the motion that takes one to the other)."""
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    dx, dy = target[..., 0] - pose[..., 0], target[..., 1] - pose[..., 1]
    return np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(target[..., 2] - pose[..., 2])], -1)


def headings_from_positions(points: np.ndarray, first_heading: float = 0.0, still_m: float = STILL_M) -> np.ndarray:
    """[T, 2] positions of consecutive poses (ego frame, metres) -> [T] headings (rad).

    Pose 0's heading is ``first_heading``; pose t (0 < t < T-1) faces the chord from t-1 to t+1, the last pose its
    incoming segment; a chord shorter than ``still_m`` keeps the previous heading."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h = np.zeros(len(p))
    if len(p) == 0:
        return h
    h[0] = first_heading
    for t in range(1, len(p)):
        d = (p[t + 1] - p[t - 1]) if t + 1 < len(p) else (p[t] - p[t - 1])
        h[t] = np.arctan2(d[1], d[0]) if np.hypot(*d) >= still_m else h[t - 1]
    return h


def future_poses(future: np.ndarray) -> np.ndarray:
    """[N, 2] future positions (ego frame) -> [N + 1, 3] poses, the ego's (origin, heading 0) first."""
    p = np.concatenate([np.zeros((1, 2)), np.asarray(future, dtype=np.float64).reshape(-1, 2)], 0)
    return np.concatenate([p, headings_from_positions(p)[:, None]], 1)


def history_poses(past: np.ndarray) -> np.ndarray:
    """[k, 2] past positions (oldest first, ego frame) -> [k + 1, 3] poses ending at the ego (origin, heading 0).

    Headings are estimated backwards from the ego's (heading 0 at the origin), so the oldest pose's is known: the
    reversed path is travelled facing backwards (heading pi at the ego), and pi is taken off again."""
    p = np.concatenate([np.asarray(past, dtype=np.float64).reshape(-1, 2), np.zeros((1, 2))], 0)
    h = wrap_angle(headings_from_positions(p[::-1], first_heading=np.pi)[::-1] - np.pi)
    return np.concatenate([p, h[:, None]], 1)


def segments(poses: np.ndarray) -> np.ndarray:
    """[T, 3] poses -> [T - 1, 3] motions, each in the frame of the pose before it."""
    return relative(poses[:-1], poses[1:])


# ---------------------------------------------------------------------------------------------------- codebook
@dataclass
class EncodeResult:
    """``codes`` [N] int64 entry indices; ``distances`` [N] contour RMS (m) of each step's chosen entry;
    ``out_of_range`` [N] bool: the step's target motion lies outside the codebook's range."""

    codes: np.ndarray
    distances: np.ndarray
    out_of_range: np.ndarray


@dataclass
class RoundTrip:
    """Encode-then-decode error of a set of trajectories: per-waypoint L2 (metres) mean and max, trajectories and
    steps out of the codebook's range."""

    trajectories: int
    mean_l2: float
    max_l2: float
    out_of_range_trajectories: int
    out_of_range_steps: int

    def line(self) -> str:
        return (f"{self.trajectories} trajectories: L2 mean {self.mean_l2:.4f} m, max {self.max_l2:.4f} m; out of "
                f"the codebook's range: {self.out_of_range_trajectories} trajectories ({self.out_of_range_steps} "
                "steps, encoded with the nearest code)")


@dataclass
class ActionCodebook:
    """``entries`` [K, 3] float64 motions (dx, dy m, dyaw rad) in the frame of the previous pose."""

    entries: np.ndarray
    tolerance_m: float = TOLERANCE_M
    method: str = "kdisk"
    seed: int = 0
    fit: dict = field(default_factory=dict)
    """Fitting report (segments, round trip on the fitting trajectories, per method)."""
    source: str = ""
    """The file it was loaded from ('' for a fresh one)."""

    def __post_init__(self):
        e = np.asarray(self.entries, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != 3 or len(e) == 0 or not np.all(np.isfinite(e)):
            raise CodebookError(f"codebook {self.source or '(in memory)'}: entries must be a non-empty [K, 3] array "
                                f"of finite (dx, dy, dyaw), got shape {e.shape}")
        self.entries = e
        self._contours = contour(e).reshape(len(e), 8)
        margin = np.array([self.tolerance_m, self.tolerance_m, self.tolerance_m / (0.5 * VEHICLE_LENGTH)])
        self._lo, self._hi = e.min(0) - margin, e.max(0) + margin

    @property
    def size(self) -> int:
        return len(self.entries)

    # -------------------------------------------------------------------------------------------- encode/decode
    def nearest(self, motions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[M, 3] motions -> ([M] nearest entry, [M] contour RMS distance in metres)."""
        c = contour(np.asarray(motions, dtype=np.float64).reshape(-1, 3)).reshape(-1, 1, 8)
        d2 = ((c - self._contours[None]) ** 2).sum(-1) / 4
        k = d2.argmin(1)
        return k, np.sqrt(d2[np.arange(len(k)), k])

    def in_range(self, motions: np.ndarray) -> np.ndarray:
        """[M, 3] motions -> [M] bool: inside the box of the entries, ``tolerance_m`` wider."""
        m = np.asarray(motions, dtype=np.float64).reshape(-1, 3)
        return np.all((m >= self._lo) & (m <= self._hi), axis=1)

    def encode_poses(self, poses: np.ndarray, beam: int = BEAM) -> EncodeResult:
        """[T + 1, 3] target poses, the start pose first -> T codes.

        Closed loop with a beam: each of the ``beam`` best partial sequences is extended by every entry, scored by
        the summed squared contour distance between the decoded poses and the targets, and the ``beam`` best
        continue (``beam=1`` is the greedy nearest entry at each step from the pose decoded so far). Errors of one
        step are corrected by the next instead of accumulating."""
        p = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
        K = self.size
        cur = p[:1]  # [b, 3] decoded poses of the live sequences
        cost = np.zeros(1)
        hist = np.zeros((1, 0), np.int64)
        dist = np.zeros((1, 0))
        for t in range(1, len(p)):
            want = relative(cur, np.broadcast_to(p[t], cur.shape))  # [b, 3] target in each decoded frame
            d2 = ((contour(want).reshape(-1, 1, 8) - self._contours[None]) ** 2).sum(-1) / 4  # [b, K]
            total = (cost[:, None] + d2).reshape(-1)
            keep = np.argsort(total, kind="stable")[:beam]
            b, k = keep // K, keep % K
            cur = compose(cur[b], self.entries[k])
            cost = total[keep]
            hist = np.concatenate([hist[b], k[:, None]], 1)
            dist = np.concatenate([dist[b], np.sqrt(d2[b, k])[:, None]], 1)
        codes = hist[0]
        # range: each step's target motion seen from the pose decoded before it
        prev = np.concatenate([p[:1], self.decode(codes, start=p[0])[:-1]], 0) if len(codes) else p[:0]
        out = ~self.in_range(relative(prev, p[1:])) if len(codes) else np.zeros(0, bool)
        return EncodeResult(codes, dist[0], out)

    def encode_future(self, future: np.ndarray) -> EncodeResult:
        """[N, 2] future positions (ego frame, metres) -> N codes from the ego pose."""
        return self.encode_poses(future_poses(future))

    def encode_history(self, past: np.ndarray) -> EncodeResult:
        """[k, 2] past positions (oldest first, ego frame) -> k codes: from the oldest pose, the last one is the move
        into the ego's position."""
        return self.encode_poses(history_poses(past))

    def decode(self, codes, start: Optional[np.ndarray] = None) -> np.ndarray:
        """[N] entry indices -> [N, 3] poses (x, y, yaw; ego frame) chained from ``start`` (default the ego: origin,
        heading 0). An index outside 0..K-1 is an error."""
        idx = np.asarray(codes, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.size):
            raise CodebookError(f"codebook {self.source or '(in memory)'}: code out of 0..{self.size - 1}: "
                                f"{idx.tolist()}")
        cur = np.zeros(3) if start is None else np.asarray(start, dtype=np.float64)
        out = []
        for k in idx:
            cur = compose(cur, self.entries[k])
            out.append(cur)
        return np.asarray(out).reshape(-1, 3)

    def round_trip(self, futures: np.ndarray, masks: Optional[np.ndarray] = None) -> RoundTrip:
        """[M, N, 2] future trajectories (ego frame) and optional [M, N] masks (waypoints with mask 0 are neither
        targets nor errors; a trajectory is cut at its first invalid waypoint) -> :class:`RoundTrip`."""
        f = np.asarray(futures, dtype=np.float64)
        m = np.ones(f.shape[:2]) if masks is None else np.asarray(masks, dtype=np.float64)
        errs, n_traj, oor_t, oor_s = [], 0, 0, 0
        for traj, mask in zip(f, m):
            n = int(np.argmin(mask > 0.5)) if not np.all(mask > 0.5) else len(mask)
            if n == 0:
                continue
            r = self.encode_future(traj[:n])
            dec = self.decode(r.codes)[:, :2]
            errs.append(np.linalg.norm(dec - traj[:n], axis=1))
            n_traj += 1
            oor_t += int(r.out_of_range.any())
            oor_s += int(r.out_of_range.sum())
        e = np.concatenate(errs) if errs else np.zeros(0)
        return RoundTrip(n_traj, float(e.mean()) if len(e) else 0.0, float(e.max()) if len(e) else 0.0, oor_t, oor_s)

    # -------------------------------------------------------------------------------------------------- files
    def to_json(self) -> dict:
        return {"format": CODEBOOK_FORMAT, "size": self.size, "frame": "previous pose: x forward, y left (m), "
                "yaw counter-clockwise (rad)", "step_seconds": 0.5, "tolerance_m": self.tolerance_m,
                "vehicle": [VEHICLE_LENGTH, VEHICLE_WIDTH], "method": self.method, "seed": self.seed,
                "fit": self.fit, "entries": [[float(v) for v in row] for row in self.entries]}

    def save(self, path) -> Path:
        """Write the JSON file atomically; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(self.to_json(), f, indent=None)
        os.replace(f.name, path)
        return path

    def same_entries(self, other: "ActionCodebook") -> bool:
        return self.entries.shape == other.entries.shape and bool(np.array_equal(self.entries, other.entries))


def load_codebook(path, expected_size: Optional[int] = None) -> ActionCodebook:
    """Read and check a codebook file; ``expected_size``: the size the model's vocabulary was built for
    (``model.text.action_codebook_size``). Every problem is a :class:`CodebookError` naming the file."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise CodebookError(f"action codebook {p}: file not found (fit it with `odvla codebook fit --shards DIR`, "
                            "which writes it beside the shards)") from None
    cb = _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)
    if expected_size is not None and cb.size != int(expected_size):
        raise CodebookError(f"action codebook {p}: {cb.size} entries, but model.text.action_codebook_size is "
                            f"{expected_size} (the model's vocabulary has that many action tokens)")
    return cb


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, nbytes: int) -> ActionCodebook:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CodebookError(f"action codebook {path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != CODEBOOK_FORMAT:
        raise CodebookError(f"action codebook {path}: not a codebook of format {CODEBOOK_FORMAT} (found "
                            f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    try:
        entries = np.asarray(data["entries"], dtype=np.float64)
        size = int(data["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CodebookError(f"action codebook {path}: 'entries' / 'size' missing or not numbers ({e})") from None
    if entries.ndim != 2 or entries.shape[1:] != (3,) or len(entries) != size:
        raise CodebookError(f"action codebook {path}: 'size' says {size} entries, 'entries' has shape "
                            f"{entries.shape} (expected [{size}, 3])")
    try:
        return ActionCodebook(entries, tolerance_m=float(data.get("tolerance_m", TOLERANCE_M)),
                              method=str(data.get("method", "")), seed=int(data.get("seed", 0)),
                              fit=dict(data.get("fit") or {}), source=path)
    except CodebookError as e:
        raise CodebookError(f"action codebook {path}: {e}") from None


def check_same_codebook(model_file, data_file) -> None:
    """The model's codebook and the data's must hold the same entries: a :class:`CodebookError` naming both."""
    a, b = load_codebook(model_file), load_codebook(data_file)
    if not a.same_entries(b):
        raise CodebookError(f"the model's action codebook {model_file} ({a.size} entries) differs from the codebook "
                            f"of the shards it is evaluated on, {data_file} ({b.size} entries): the model's tokens "
                            "would name other motions; evaluate on the shards it was trained with, or refit and "
                            "retrain")


# ------------------------------------------------------------------------------------------------------- fitting
def training_segments(futures, future_masks, pasts, past_masks) -> np.ndarray:
    """Motions of the train split: [M, 6, 2] futures / [M, 6] masks and [M, 4, 2] histories / [M, 4] masks (ego
    frame) -> [S, 3] motions (each trajectory cut at its first invalid waypoint; a history is its valid tail)."""
    out = []
    for f, fm in zip(np.asarray(futures, np.float64), np.asarray(future_masks, np.float64)):
        n = len(fm) if np.all(fm > 0.5) else int(np.argmin(fm > 0.5))
        if n:
            out.append(segments(future_poses(f[:n])))
    for p, pm in zip(np.asarray(pasts, np.float64), np.asarray(past_masks, np.float64)):
        valid = p[pm > 0.5]
        if len(valid):
            out.append(segments(history_poses(valid)))
    if not out:
        raise CodebookError("no valid ego trajectory in the fitting data")
    return np.concatenate(out, 0)


def _mean_motion(m: np.ndarray) -> np.ndarray:
    return np.array([m[:, 0].mean(), m[:, 1].mean(), np.arctan2(np.sin(m[:, 2]).mean(), np.cos(m[:, 2]).mean())])


def fit_kdisk(motions: np.ndarray, size: int, tolerance: float = TOLERANCE_M, seed: int = 0) -> np.ndarray:
    """K-disk (see module docstring) -> [size, 3] entries. Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    X = contour(motions).reshape(-1, 8)
    entries: list[np.ndarray] = []
    tol = float(tolerance)
    left = np.arange(len(motions))
    while len(entries) < size:
        if len(left) == 0:
            tol /= 2
            if tol < 1e-4:
                break
            ent = contour(np.asarray(entries)).reshape(-1, 8)
            d2 = np.min(((X[:, None] - ent[None]) ** 2).sum(-1) / 4, axis=1)
            left = np.flatnonzero(d2 > tol ** 2)
            continue
        x0 = X[left[rng.integers(len(left))]]
        close = ((X[left] - x0) ** 2).sum(-1) / 4 <= tol ** 2
        entries.append(_mean_motion(motions[left[close]]))
        left = left[~close]
    if len(entries) < size:
        raise CodebookError(f"K-disk found only {len(entries)} entries in {len(motions)} segments, fewer "
                            f"than the codebook size {size}: choose model.text.action_codebook_size <= "
                            f"{len(entries)} (or fit on more data)")
    return np.asarray(entries)


def fit_kmeans(motions: np.ndarray, size: int, seed: int = 0, iterations: int = 30) -> np.ndarray:
    """k-means on the contours (``scipy.cluster.vq.kmeans2``, k-means++ seeding) -> [size, 3] mean motions."""
    import warnings

    from scipy.cluster.vq import kmeans2

    X = contour(motions).reshape(-1, 8)
    if len(np.unique(np.round(X, 6), axis=0)) < size:
        raise CodebookError(f"k-means: {len(motions)} segments hold fewer than {size} distinct motions: choose a "
                            "smaller model.text.action_codebook_size")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty clusters are refilled below
        _, label = kmeans2(X, size, iter=iterations, minit="++", seed=np.random.default_rng(seed))
    entries = np.zeros((size, 3))
    filled = np.zeros(size, bool)
    for k in np.unique(label):
        entries[k] = _mean_motion(motions[label == k])
        filled[k] = True
    for k in np.flatnonzero(~filled):  # an empty cluster: the segment the filled entries represent worst
        ent = contour(entries[filled]).reshape(-1, 8)
        d2 = np.min(((X[:, None] - ent[None]) ** 2).sum(-1), axis=1)
        entries[k] = motions[int(d2.argmax())]
        filled[k] = True
    return entries


def _sorted(entries: np.ndarray) -> np.ndarray:
    """Entries in a fixed order (dx, then dy, then dyaw), so token ids read as a table of motions."""
    return entries[np.lexsort((entries[:, 2], entries[:, 1], entries[:, 0]))]


def fit_codebook(futures, future_masks, pasts, past_masks, size: int = 2048, method: str = "auto",
                 tolerance: float = TOLERANCE_M, seed: int = 0) -> ActionCodebook:
    """Fit on a split's ego futures [M, 6, 2] and histories [M, 4, 2] with their masks (ego frame, metres).
    ``method`` 'auto' fits K-disk and k-means and keeps the smaller mean round-trip error on these futures; the
    report of each lands in ``codebook.fit``."""
    if method not in METHODS:
        raise ValueError(f"codebook method must be one of {METHODS}, got {method!r}")
    motions = training_segments(futures, future_masks, pasts, past_masks)
    tried = ("kdisk", "kmeans") if method == "auto" else (method,)
    results, errors = {}, {}
    for m in tried:
        try:
            ent = fit_kdisk(motions, size, tolerance, seed) if m == "kdisk" else fit_kmeans(motions, size, seed)
        except CodebookError as e:
            errors[m] = str(e)
            continue
        cb = ActionCodebook(_sorted(ent), tolerance, m, seed)
        results[m] = (cb, cb.round_trip(futures, future_masks))
    if not results:
        raise CodebookError("; ".join(f"{m}: {e}" for m, e in errors.items()))
    best = min(results, key=lambda m: results[m][1].mean_l2)
    cb = results[best][0]
    cb.fit = {"segments": int(len(motions)), "trajectories": int(len(np.asarray(futures))), "chosen": best,
              **{f"{m}_train_round_trip": vars(rt) for m, (_, rt) in results.items()},
              **{f"{m}_error": e for m, e in errors.items()}}
    return cb
