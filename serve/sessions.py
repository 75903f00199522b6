"""Per-scene tracking state held by one model replica, keyed by the request's ``session_id``.

The model's ``SceneState`` (track queries, previous BEV) carries over between the keyframes of a scene. The
router (``odvla.serve.routing``) keeps a session on one replica; this store keeps its state there, evicts it
after ``serve.session_idle_s`` without a request, and says what happened to it so that the response can tell
the client: ``new``, ``continued``, ``reset`` (scene changed / frame 0 again) or ``rebuilt`` (the state was
lost: evicted while idle, or the replica that held it died; the model starts tracking again from this frame).
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

MAX_TOMBSTONES = 10_000


@dataclass
class _Entry:
    state: Any
    scene_token: str
    last_frame: int
    frames: int
    last_seen: float


@dataclass
class Checkout:
    """What ``SessionStore.checkout`` hands the replica for one request."""

    state: Any
    status: str  # new | continued | reset | rebuilt
    frames_before: int
    warning: Optional[str] = None
    lock: asyncio.Lock = field(default=None, repr=False)


class SessionStore:
    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic):
        self.idle_s = float(idle_s)
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._evicted: OrderedDict[str, float] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lock(self, session_id: str) -> asyncio.Lock:
        """Requests of one session run one at a time (frame order), other sessions batch together."""
        lk = self._locks.get(session_id)
        if lk is None:
            lk = self._locks[session_id] = asyncio.Lock()
        return lk

    def evict_idle(self) -> list[str]:
        now = self.clock()
        gone = [sid for sid, e in self._entries.items() if now - e.last_seen > self.idle_s]
        for sid in gone:
            del self._entries[sid]
            lk = self._locks.get(sid)
            if lk is not None and not lk.locked():
                del self._locks[sid]
            self._evicted[sid] = now
            self._evicted.move_to_end(sid)
        while len(self._evicted) > MAX_TOMBSTONES:
            self._evicted.popitem(last=False)
        return gone

    def checkout(self, session_id: str, scene_token: str, frame_index: Optional[int],
                 read_only: bool = False) -> Checkout:
        """State for the next frame of a session. ``read_only``: a question about the session's current frame
        (``/v1/chat``), which may repeat the last frame index and does not advance the state."""
        self.evict_idle()
        e = self._entries.get(session_id)
        if e is None:
            if session_id in self._evicted:
                return Checkout(None, "rebuilt", 0, (
                    f"session {session_id!r}: tracking state was evicted after more than {self.idle_s:g} s idle "
                    f"(serve.session_idle_s); rebuilt from this frame"))
            if frame_index:
                return Checkout(None, "rebuilt", 0, (
                    f"session {session_id!r}: no tracking state on this replica for frame {frame_index} (the session "
                    f"starts mid-scene, or the replica that held its state is gone); rebuilt from this frame"))
            return Checkout(None, "new", 0)
        if scene_token and e.scene_token and scene_token != e.scene_token:
            return Checkout(None, "reset", 0)
        if read_only:
            e.last_seen = self.clock()
            return Checkout(e.state, "continued", e.frames)
        if frame_index is not None and frame_index == 0 and e.frames > 0:
            return Checkout(None, "reset", 0)
        if frame_index is not None and frame_index <= e.last_frame:
            return Checkout(e.state, "continued", e.frames, (
                f"session {session_id!r}: frame {frame_index} is not after the last frame {e.last_frame} "
                f"of this session; tracking state reused as is"))
        return Checkout(e.state, "continued", e.frames)

    def commit(self, session_id: str, state: Any, scene_token: str, frame_index: Optional[int],
               frames_before: int) -> int:
        """Store the state after a frame; returns the session's frame count."""
        prev = self._entries.get(session_id)
        last = frame_index if frame_index is not None else ((prev.last_frame + 1) if prev else 0)
        frames = frames_before + 1
        self._entries[session_id] = _Entry(state, scene_token, last, frames, self.clock())
        self._evicted.pop(session_id, None)
        return frames
