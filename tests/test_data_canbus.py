"""CAN-bus reader of records.py: only the devkit's "no CAN data for this scene" case falls back; other problems
are named errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from odvla.platform.data.records import CanBus, CanBusError


def _write(root, scene, pose, steer):
    d = root / "can_bus"
    d.mkdir(exist_ok=True)
    (d / f"{scene}_pose.json").write_text(json.dumps(pose))
    (d / f"{scene}_steeranglefeedback.json").write_text(json.dumps(steer))


def test_reader_fallback_only_for_scenes_without_can_data(tmp_path):
    pose = [{"utime": 1_000_000 + 20_000 * i, "pos": [i * 0.1, 0, 0], "orientation": [1, 0, 0, 0],
             "vel": [5.0 + i, 0.5, 0], "accel": [0.2, -0.1, 9.8], "rotation_rate": [0, 0, 0.01 * i]}
            for i in range(10)]
    steer = [{"utime": 1_000_000 + 10_000 * i, "value": 0.1 * i} for i in range(20)]
    _write(tmp_path, "scene-0001", pose, steer)
    can = CanBus(str(tmp_path))
    msgs = can.scene_messages("scene-0001")
    state = CanBus.state(msgs, 1_050_000)  # last pose at or before: utime 1_040_000 (i=2); steer i=5
    np.testing.assert_allclose(state, [7.0, 0.5, 0.2, -0.1, 0.02, np.hypot(7.0, 0.5), 0.5], rtol=1e-6)
    assert CanBus.state(msgs, 999_999) is None  # before the first message
    # the devkit's blacklist (logs without CAN data) is the one case that falls back
    assert can.scene_messages("scene-0161") is None
    # no can_bus/ folder at all: no CAN data anywhere
    assert CanBus(str(tmp_path / "elsewhere")).scene_messages("scene-0001") is None
    # anything else is named
    with pytest.raises(CanBusError, match=r"pose messages of scene-0002 unreadable at .*scene-0002_pose.json"):
        can.scene_messages("scene-0002")
    (tmp_path / "can_bus" / "scene-0003_pose.json").write_text("{broken")
    (tmp_path / "can_bus" / "scene-0003_steeranglefeedback.json").write_text("[]")
    with pytest.raises(CanBusError, match="scene-0003.*JSONDecodeError"):
        can.scene_messages("scene-0003")
    _write(tmp_path, "scene-0004", pose, [])
    with pytest.raises(CanBusError, match="steeranglefeedback messages of scene-0004 are empty"):
        can.scene_messages("scene-0004")
    with pytest.raises(CanBusError, match="not scene-NNNN"):
        can.scene_messages("my-scene")
