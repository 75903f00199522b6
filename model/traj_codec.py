"""Waypoint text codec: ego-frame trajectories <-> the answer text the LLM reads and writes.

Text form (released OpenDriveVLA): ``<traj_start>[(x1,y1),(x2,y2),...,(x6,y6)]<traj_end>``, metres, a fixed number
of decimals (``text.traj_decimals``, 2 by default), no spaces, in the *text frame*: X to the right, Y forward, ego at
the origin. Tensors stay in the nuScenes ego frame (x forward, y left), so ``X_text = -y_ego`` and
``Y_text = x_ego``.

Options (``TextConfig``; the arithmetic of each encoding is a class in ``odvla.model.traj_encodings``):
- ``traj_encoding='delta'``: each written point is the displacement from the previous waypoint (the first one from
  the ego origin); decoding sums them back to absolute positions.
- ``traj_encoding='residual'``: each written point is the per-step displacement minus the constant-velocity step
  ``v * 0.5 s`` (``v`` = the ego velocity of ``ego_state``, rounded to the written decimals), so an all-zero answer
  is exactly the constant-velocity plan and the model writes only how the ego deviates from it (braking, turning).
  Encoding and decoding need the row's ``ego_state``; the history is written the same way.
- ``traj_encoding='action'``: one token per 0.5-s step, ``<act_k>`` naming entry k of a learned codebook of
  motions (dx, dy, dyaw in the frame of the previous pose; ``odvla.model.action_codebook``):
  ``<traj_start><act_12><act_907>...<act_40><traj_end>`` = 2 + 6 = 8 tokens. The codebook file is
  ``text.action_codebook`` (size ``text.action_codebook_size``); the history is written in the same tokens (one per
  step from the oldest valid pose into the ego's). ``compact_tokens`` does not apply to it. A target outside the
  codebook's range gets the nearest entry and is counted (``out_of_range_steps``; a warning at the first and
  at each tenfold count), never silently.
- ``compact_tokens=True``: every number is written with two dedicated vocabulary tokens, a signed integer part
  ``<+12>`` / ``<-0>`` and a fraction ``<.34>`` (no brackets or commas):
  ``<traj_start><+1><.23><+12><.34>...<traj_end>`` = 2 + 4 * 6 = 26 tokens instead of about 70 when every digit is
  a token (Qwen2.5). The tokens come from :func:`compact_number_tokens` and are added to the vocabulary by
  ``odvla.model.tokenizer``.

The parser is strict: the exact grammar of the encoder, surrounding whitespace only; malformed text raises
:class:`TrajectoryParseError` naming the waypoint, the character offset, what was expected and what was found.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

import numpy as np

from odvla.model.constants import EGO_STATE_FIELDS, FUTURE_STEPS, STEP_SECONDS
from odvla.model.traj_encodings import TRAJ_ENCODINGS

log = logging.getLogger(__name__)

TRAJ_START = "<traj_start>"
TRAJ_END = "<traj_end>"
MAX_INT_DIGITS = 3
"""Integer part of a written number has at most 3 digits (|value| < 1000 m); compact tokens cover |value| < 100."""
COMPACT_INT_LIMIT = 99
ENCODINGS = tuple(TRAJ_ENCODINGS)


class TrajectoryParseError(ValueError):
    """Text that is not a trajectory of the codec's grammar. ``position`` = character offset (or None)."""

    def __init__(self, message: str, text: str = "", position: Optional[int] = None):
        self.text = text
        self.position = position
        shown = text if len(text) <= 200 else text[:200] + "..."
        super().__init__(f"{message} (in {shown!r})")


# ----------------------------------------------------------------------------------------------- frames, numbers
def ego_to_text(points_ego: np.ndarray) -> np.ndarray:
    """[..., 2] ego frame (x forward, y left) -> text frame (X right, Y forward)."""
    p = np.asarray(points_ego, dtype=np.float64)
    return np.stack([-p[..., 1], p[..., 0]], axis=-1)


def text_to_ego(points_text: np.ndarray) -> np.ndarray:
    """[..., 2] text frame (X right, Y forward) -> ego frame (x forward, y left)."""
    p = np.asarray(points_text, dtype=np.float64)
    return np.stack([p[..., 1], -p[..., 0]], axis=-1)


def format_number(value: float, decimals: int = 2) -> str:
    """Fixed-point text without '-0.00' (negative zero after rounding is written as 0)."""
    if not np.isfinite(value):
        raise ValueError(f"cannot write non-finite value {value!r} as trajectory text")
    s = f"{float(value):.{decimals}f}"
    if s.startswith("-") and float(s) == 0.0:
        s = s[1:]
    if len(s.lstrip("-").split(".")[0]) > MAX_INT_DIGITS:
        raise ValueError(f"value {value!r} m is outside the writable range |v| < 10^{MAX_INT_DIGITS}")
    return s


def format_points(points_ego: np.ndarray, decimals: int = 2) -> str:
    """[N, 2] ego-frame points -> ``'[(x,y),...]'`` in the text frame (X right, Y forward), no spaces.

    Used for the trajectory answer, the history line of the prompt and any other text that lists points
    (agent futures of instruction data).
    """
    p = np.asarray(points_ego, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"format_points expects [N, 2] ego-frame points, got shape {p.shape}")
    t = ego_to_text(p)
    return "[" + ",".join(f"({format_number(x, decimals)},{format_number(y, decimals)})" for x, y in t) + "]"


def compact_number_tokens(decimals: int = 2) -> list[str]:
    """Vocabulary added by the compact encoding: ``<+0>..<+99>``, ``<-0>..<-99>`` and ``<.00>..<.99>``."""
    ints = [f"<{s}{i}>" for s in "+-" for i in range(COMPACT_INT_LIMIT + 1)]
    fracs = [f"<.{i:0{decimals}d}>" for i in range(10 ** decimals)] if decimals > 0 else []
    return ints + fracs


def action_tokens(size: int) -> list[str]:
    """Vocabulary added by the action encoding: ``<act_0>`` .. ``<act_{size-1}>``, token k names codebook entry k."""
    if int(size) < 1:
        raise ValueError(f"model.text.action_codebook_size must be >= 1, got {size!r}")
    return [f"<act_{k}>" for k in range(int(size))]


# -------------------------------------------------------------------------------------------------- the codec
class TrajectoryCodec:
    """Encode [6, 2] ego-frame trajectories as answer text and parse them back (see module docstring).

    ``text_cfg``: ``odvla.model.config.TextConfig`` (``traj_encoding``, ``traj_decimals``, ``compact_tokens``).
    """

    def __init__(self, text_cfg, num_points: int = FUTURE_STEPS):
        if text_cfg.traj_encoding not in ENCODINGS:
            raise ValueError(f"text.traj_encoding must be one of {ENCODINGS}, got {text_cfg.traj_encoding!r}")
        if not 0 <= int(text_cfg.traj_decimals) <= 4:
            raise ValueError(f"text.traj_decimals must be in 0..4, got {text_cfg.traj_decimals!r}")
        if text_cfg.compact_tokens and int(text_cfg.traj_decimals) > 3:
            raise ValueError("text.compact_tokens supports text.traj_decimals <= 3 (10^decimals fraction tokens)")
        self.encoding = text_cfg.traj_encoding
        self.scheme = TRAJ_ENCODINGS[self.encoding]
        self.decimals = int(text_cfg.traj_decimals)
        self.action = bool(getattr(self.scheme, "needs_codebook", False))
        self.compact = bool(text_cfg.compact_tokens) and not self.action
        self.codebook_size = int(getattr(text_cfg, "action_codebook_size", 2048))
        self.codebook_path = getattr(text_cfg, "action_codebook", None)
        self.out_of_range_steps = 0
        """Steps encoded (action) whose target motion lay outside the codebook's range (nearest entry used)."""
        self._action = re.compile(r"<act_(0|[1-9]\d*)>")
        self.num_points = int(num_points)
        d = self.decimals
        frac = rf"\.\d{{{d}}}" if d > 0 else ""
        self._number = re.compile(rf"-?(?:0|[1-9]\d{{0,{MAX_INT_DIGITS - 1}}}){frac}")
        self._compact_int = re.compile(r"<([+-])(0|[1-9]\d?)>")
        self._compact_frac = re.compile(rf"<\.(\d{{{d}}})>") if d > 0 else None

    # ------------------------------------------------------------------------------------------------ encode
    def _cv_step_q(self, ego_state) -> np.ndarray:
        """[2] int64: the constant-velocity step ``v * 0.5 s`` in the text frame, in units of 10^-decimals m."""
        if ego_state is None:
            raise ValueError("the residual trajectory encoding needs the row's ego_state (its velocity is the "
                             "constant-velocity anchor)")
        e = np.asarray(ego_state, dtype=np.float64).reshape(-1)
        if e.shape != (len(EGO_STATE_FIELDS),) or not np.all(np.isfinite(e[:2])):
            raise ValueError(f"ego_state must be {len(EGO_STATE_FIELDS)} finite values {EGO_STATE_FIELDS}, "
                             f"got {e.tolist()}")
        v_text = ego_to_text(e[[EGO_STATE_FIELDS.index("vx"), EGO_STATE_FIELDS.index("vy")]])
        return np.round(v_text * STEP_SECONDS * 10 ** self.decimals).astype(np.int64)

    def _cv(self, ego_state):
        return self._cv_step_q(ego_state) if self.scheme.needs_ego_state else None

    @property
    def codebook(self):
        """The :class:`odvla.model.action_codebook.ActionCodebook` of ``text.action_codebook`` (action only; loaded
        once per file version, checked against ``text.action_codebook_size``)."""
        from odvla.model.action_codebook import load_codebook

        if not self.action:
            raise ValueError(f"text.traj_encoding {self.encoding!r} has no action codebook")
        if not self.codebook_path:
            raise ValueError("text.traj_encoding 'action' needs model.text.action_codebook: the codebook file "
                             "(`odvla codebook fit --shards DIR` writes DIR/action_codebook.json)")
        return load_codebook(self.codebook_path, self.codebook_size)

    def _action_codes(self, result, what: str) -> str:
        n = int(result.out_of_range.sum())
        if n:
            before = self.out_of_range_steps
            self.out_of_range_steps += n
            if len(str(before)) < len(str(self.out_of_range_steps)) or before == 0:  # 1st, then per decade
                log.warning("%s: %d step(s) outside the range of the action codebook %s, written with the nearest "
                            "entry (%d so far)", what, n, self.codebook_path, self.out_of_range_steps)
        return "".join(f"<act_{int(k)}>" for k in result.codes)

    def to_written(self, traj_ego: np.ndarray, ego_state=None) -> np.ndarray:
        """[N, 2] ego frame -> [N, 2] text-frame values as written (absolute, deltas or residuals), in metres."""
        return self.scheme.future(ego_to_text(traj_ego), self.decimals, self._cv(ego_state))

    def encode(self, traj_ego: np.ndarray, ego_state=None) -> str:
        """[6, 2] future ego positions (x forward, y left, metres) -> answer text (see module docstring).
        ``ego_state`` [7]: needed by the residual encoding only."""
        p = np.asarray(traj_ego, dtype=np.float64)
        if p.shape != (self.num_points, 2):
            raise ValueError(f"trajectory must have shape ({self.num_points}, 2), got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"trajectory has non-finite values: {p.tolist()}")
        if self.action:
            return TRAJ_START + self._action_codes(self.codebook.encode_future(p), "trajectory") + TRAJ_END
        w = self.to_written(p, ego_state)
        if self.compact:
            return TRAJ_START + "".join(self._compact_number(v) for v in w.reshape(-1)) + TRAJ_END
        d = self.decimals
        return TRAJ_START + "[" + ",".join(
            f"({format_number(x, d)},{format_number(y, d)})" for x, y in w) + "]" + TRAJ_END

    def encode_history(self, past_ego: np.ndarray, ego_state=None) -> str:
        """[k, 2] past ego positions (oldest first, ego frame, k >= 0) -> history text in this codec's encoding.

        The plain absolute codec writes the reference form ``[(x,y),...]`` (as :func:`format_points`). With
        ``delta`` the history is written as per-step displacements ending at the ego (the last one is the move
        into the current position, so a constant-velocity plan repeats it); ``residual`` writes those displacements
        minus the constant-velocity step of ``ego_state``; with ``compact_tokens`` the numbers use the same
        dedicated tokens as the answer. Prompt and answer then speak one number vocabulary.
        """
        p = np.asarray(past_ego, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(p)):
            raise ValueError(f"history has non-finite values: {p.tolist()}")
        if self.action:
            return self._action_codes(self.codebook.encode_history(p), "history") if len(p) else ""
        w = self.scheme.history(ego_to_text(p), self.decimals, self._cv(ego_state) if len(p) else None)
        if self.compact:
            return "".join(self._compact_number(v) for v in w.reshape(-1))
        d = self.decimals
        return "[" + ",".join(f"({format_number(x, d)},{format_number(y, d)})" for x, y in w) + "]"

    def _compact_number(self, v: float) -> str:
        s = format_number(v, self.decimals)
        sign = "-" if s.startswith("-") else "+"
        ip, _, fp = s.lstrip("-").partition(".")
        if int(ip) > COMPACT_INT_LIMIT:
            raise ValueError(f"value {v!r} m is outside the compact encoding's range |v| < {COMPACT_INT_LIMIT + 1}")
        return f"<{sign}{int(ip)}>" + (f"<.{fp}>" if self.decimals > 0 else "")

    def tokens(self) -> list[str]:
        """Vocabulary this codec's text needs beyond ordinary text (markers, and the compact number tokens)."""
        if self.action:
            return [TRAJ_START, TRAJ_END] + action_tokens(self.codebook_size)
        return [TRAJ_START, TRAJ_END] + (compact_number_tokens(self.decimals) if self.compact else [])

    # ------------------------------------------------------------------------------------------------ decode
    def decode(self, text: str, ego_state=None) -> np.ndarray:
        """Answer text -> [6, 2] ego-frame positions (float64). Raises :class:`TrajectoryParseError`.
        ``ego_state`` [7]: needed by the residual encoding only (its velocity is the anchor)."""
        written = self.parse_written(text)
        if self.action:
            return self.codebook.decode(written.astype(np.int64))[:, :2]
        return text_to_ego(self.scheme.absolute(written, self.decimals, self._cv(ego_state)))

    def parse_written(self, text: str) -> np.ndarray:
        """Answer text -> [6, 2] values as written (text frame: absolute, deltas or residuals); action: [6] codebook
        indices (as float64)."""
        if not isinstance(text, str):
            raise TrajectoryParseError(f"expected a string, got {type(text).__name__}", str(text))
        s = text.strip()
        off = len(text) - len(text.lstrip())
        if not s.startswith(TRAJ_START):
            raise TrajectoryParseError(f"expected {TRAJ_START!r} at char {off}, found {s[:12]!r}", text, off)
        pos = len(TRAJ_START)
        if self.action:
            return np.asarray(self._parse_action(s, pos, text, off), dtype=np.float64)
        values = self._parse_compact(s, pos, text, off) if self.compact else self._parse_plain(s, pos, text, off)
        return np.asarray(values, dtype=np.float64).reshape(self.num_points, 2)

    def _expect(self, s: str, pos: int, lit: str, what: str, text: str, off: int) -> int:
        if not s.startswith(lit, pos):
            found = s[pos:pos + 8] if pos < len(s) else "end of text"
            raise TrajectoryParseError(f"{what}: expected {lit!r} at char {pos + off}, found {found!r}", text, pos + off)
        return pos + len(lit)

    def _parse_plain(self, s: str, pos: int, text: str, off: int) -> list[float]:
        n, d = self.num_points, self.decimals
        pos = self._expect(s, pos, "[", "start of the point list", text, off)
        values: list[float] = []
        for i in range(n):
            where = f"waypoint {i + 1} of {n}"
            pos = self._expect(s, pos, "(", where, text, off)
            for axis, sep in (("x", ","), ("y", ")")):
                m = self._number.match(s, pos)
                if m is None:
                    found = s[pos:pos + 8] if pos < len(s) else "end of text"
                    raise TrajectoryParseError(
                        f"{where}, {axis}: expected a number with {d} decimals at char {pos + off}, found {found!r}",
                        text, pos + off)
                values.append(float(m.group(0)))
                pos = self._expect(s, m.end(), sep, f"{where}, after {axis}", text, off)
            if i < n - 1:
                if s.startswith("]", pos):
                    raise TrajectoryParseError(f"only {i + 1} waypoints, expected {n}", text, pos + off)
                pos = self._expect(s, pos, ",", f"after {where}", text, off)
        if s.startswith(",", pos):
            raise TrajectoryParseError(f"more than {n} waypoints", text, pos + off)
        pos = self._expect(s, pos, "]", "end of the point list", text, off)
        pos = self._expect(s, pos, TRAJ_END, "end of the trajectory", text, off)
        if pos != len(s):
            raise TrajectoryParseError(f"unexpected text after {TRAJ_END} at char {pos + off}", text, pos + off)
        return values

    def _parse_compact(self, s: str, pos: int, text: str, off: int) -> list[float]:
        n = self.num_points
        values: list[float] = []
        for k in range(2 * n):
            where = f"waypoint {k // 2 + 1} of {n}, {'xy'[k % 2]}"
            m = self._compact_int.match(s, pos)
            if m is None:
                if s.startswith(TRAJ_END, pos):
                    raise TrajectoryParseError(f"only {k} numbers, expected {2 * n} ({where} missing)", text, pos + off)
                raise TrajectoryParseError(f"{where}: expected an integer token like '<+12>' at char {pos + off}, "
                                           f"found {s[pos:pos + 8]!r}", text, pos + off)
            sign, ip = m.group(1), int(m.group(2))
            pos = m.end()
            frac = 0.0
            if self._compact_frac is not None:
                f = self._compact_frac.match(s, pos)
                if f is None:
                    raise TrajectoryParseError(f"{where}: expected a fraction token like '<.{'0' * self.decimals}>' "
                                               f"at char {pos + off}, found {s[pos:pos + 8]!r}", text, pos + off)
                frac = int(f.group(1)) / 10 ** self.decimals
                pos = f.end()
            values.append((-1.0 if sign == "-" else 1.0) * (ip + frac))
        pos = self._expect(s, pos, TRAJ_END, "end of the trajectory", text, off)
        if pos != len(s):
            raise TrajectoryParseError(f"unexpected text after {TRAJ_END} at char {pos + off}", text, pos + off)
        return values

    def _parse_action(self, s: str, pos: int, text: str, off: int) -> list[int]:
        n, codes = self.num_points, []
        for i in range(n):
            m = self._action.match(s, pos)
            if m is None:
                if s.startswith(TRAJ_END, pos):
                    raise TrajectoryParseError(f"only {i} action tokens, expected {n}", text, pos + off)
                raise TrajectoryParseError(f"step {i + 1} of {n}: expected an action token like '<act_12>' at char "
                                           f"{pos + off}, found {s[pos:pos + 10]!r}", text, pos + off)
            k = int(m.group(1))
            if k >= self.codebook_size:
                raise TrajectoryParseError(f"step {i + 1} of {n}: <act_{k}> is outside the codebook's "
                                           f"{self.codebook_size} entries", text, pos + off)
            codes.append(k)
            pos = m.end()
        if self._action.match(s, pos):
            raise TrajectoryParseError(f"more than {n} action tokens", text, pos + off)
        pos = self._expect(s, pos, TRAJ_END, "end of the trajectory", text, off)
        if pos != len(s):
            raise TrajectoryParseError(f"unexpected text after {TRAJ_END} at char {pos + off}", text, pos + off)
        return codes

    def find(self, text: str) -> Optional[str]:
        """The first ``<traj_start>...<traj_end>`` span in a longer answer, or None (no trajectory written)."""
        i = text.find(TRAJ_START)
        if i < 0:
            return None
        j = text.find(TRAJ_END, i)
        return text[i:] if j < 0 else text[i:j + len(TRAJ_END)]

    def point_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of each waypoint in an encoded text (for masking invalid waypoints)."""
        self.parse_written(text)
        s0 = text.find(TRAJ_START) + len(TRAJ_START)
        if self.action:
            return [(s0 + m.start(), s0 + m.end()) for m in self._action.finditer(text[s0:])][:self.num_points]
        if self.compact:
            toks = list(re.finditer(r"<[+\-.][0-9]*>", text[s0:]))
            per = 4 if self.decimals > 0 else 2
            return [(s0 + toks[i * per].start(), s0 + toks[i * per + per - 1].end()) for i in range(self.num_points)]
        return [(s0 + m.start(), s0 + m.end()) for m in re.finditer(r"\([^()]*\)", text[s0:])]
