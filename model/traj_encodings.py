"""Trajectory encodings: how the numbers of a written trajectory relate to the ego's positions.

Each encoding is a small class in ``TRAJ_ENCODINGS`` (``text.traj_encoding`` names one); the codec
(``odvla.model.traj_codec``) does the text, an encoding only the arithmetic. Everything here is in the text frame
(X right, Y forward, metres) and works on integer multiples of ``10^-decimals`` m where it differences, so decoding
gives the rounded positions back exactly (no error accumulation).

To add an encoding: subclass ``TrajEncoding``, implement the three methods, add it to ``TRAJ_ENCODINGS``.
"""
from __future__ import annotations

import numpy as np


class TrajEncoding:
    """The arithmetic of one encoding. ``cv_q`` [2] int64: the constant-velocity step ``v * 0.5 s`` in units of
    ``10^-decimals`` m (None when the encoding does not need it)."""

    name = ""
    needs_ego_state = False
    """Encoding and decoding need the row's ``ego_state`` (its velocity), so ``cv_q`` is given."""
    needs_codebook = False
    """Tokens name entries of an action codebook (``action``): the codec does the arithmetic, not these methods."""
    prompt_note = ""
    """A sentence the system prompt adds so the model is told how numbers are written ('' for none)."""

    def future(self, pos_text: np.ndarray, decimals: int, cv_q) -> np.ndarray:
        """[N, 2] future positions -> [N, 2] values as written (metres)."""
        raise NotImplementedError

    def history(self, past_text: np.ndarray, decimals: int, cv_q) -> np.ndarray:
        """[k, 2] past positions (oldest first, k >= 0) -> [k, 2] values as written (metres)."""
        raise NotImplementedError

    def absolute(self, written: np.ndarray, decimals: int, cv_q) -> np.ndarray:
        """[N, 2] values as written -> [N, 2] absolute future positions (metres)."""
        raise NotImplementedError


def _q(p: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(p * 10 ** decimals).astype(np.int64)


class AbsoluteEncoding(TrajEncoding):
    """The released OpenDriveVLA form: absolute positions relative to the ego."""

    name = "absolute"

    def future(self, pos_text, decimals, cv_q):
        return pos_text

    def history(self, past_text, decimals, cv_q):
        return _q(past_text, decimals) / 10 ** decimals

    def absolute(self, written, decimals, cv_q):
        return written


class DeltaEncoding(TrajEncoding):
    """Per-step displacements: the first from the ego origin. The history is the displacements ending at the ego
    (its last one is the move into the current position, so a constant-velocity plan repeats it)."""

    name = "delta"
    prompt_note = (" Each written waypoint is the displacement (dx,dy) from the previous waypoint; the first one is the "
                   "displacement from the ego vehicle.")

    def steps_q(self, pos_text, decimals) -> np.ndarray:
        q = _q(pos_text, decimals)
        return np.diff(np.concatenate([np.zeros((1, 2), np.int64), q], axis=0), axis=0)

    def history_steps_q(self, past_text, decimals) -> np.ndarray:
        q = _q(past_text, decimals)
        return np.diff(np.concatenate([q, np.zeros((1, 2), np.int64)], axis=0), axis=0)

    def future(self, pos_text, decimals, cv_q):
        return self.steps_q(pos_text, decimals) / 10 ** decimals

    def history(self, past_text, decimals, cv_q):
        return self.history_steps_q(past_text, decimals) / 10 ** decimals

    def absolute(self, written, decimals, cv_q):
        return np.cumsum(written, axis=0)


class ResidualEncoding(DeltaEncoding):
    """Per-step displacements minus the constant-velocity step ``v * 0.5 s``: all zeros is the constant-velocity
    plan, and the model writes only how the ego deviates from it (braking, starting, turning)."""

    name = "residual"
    needs_ego_state = True
    prompt_note = (" Each written waypoint is the displacement (dx,dy) from the previous waypoint minus the "
                   "displacement of 0.5 seconds at the current velocity, so all zeros keep the current velocity; the "
                   "first one is measured from the ego vehicle. The historical trajectory is written the same way.")

    def future(self, pos_text, decimals, cv_q):
        return (self.steps_q(pos_text, decimals) - cv_q) / 10 ** decimals

    def history(self, past_text, decimals, cv_q):
        dq = self.history_steps_q(past_text, decimals)
        return (dq - cv_q if len(dq) else dq) / 10 ** decimals

    def absolute(self, written, decimals, cv_q):
        return np.cumsum(written + cv_q / 10 ** decimals, axis=0)


class ActionEncoding(TrajEncoding):
    """One token per 0.5-s step naming an entry of a learned codebook of motions (dx, dy, dyaw in the frame of the
    previous pose; ``odvla.model.action_codebook``): a 3-s plan is 6 tokens. The arithmetic is the codebook's, so
    the numeric methods do not apply; the codec writes and reads the tokens (``TrajectoryCodec``)."""

    name = "action"
    needs_codebook = True
    """Encoding and decoding need ``text.action_codebook`` (the file beside the shards, or in an export)."""
    prompt_note = (" With action tokens, each 0.5-second step of the trajectory is written as one motion token "
                   "<act_k> (a learned motion segment relative to the previous pose), six between the markers; the "
                   "historical trajectory is written the same way.")


TRAJ_ENCODINGS: dict[str, TrajEncoding] = {e.name: e for e in (AbsoluteEncoding(), DeltaEncoding(),
                                                                  ResidualEncoding(), ActionEncoding())}
"""``text.traj_encoding`` -> its encoding."""
