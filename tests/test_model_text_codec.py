"""Waypoint text codec and prompt builder: frames, formats, strict parsing."""
from __future__ import annotations

import numpy as np
import pytest

from odvla.model.config import TextConfig
from odvla.model.prompt import SYSTEM_PROMPT, build_user_turn, system_prompt
from odvla.model.traj_codec import TrajectoryCodec, TrajectoryParseError, format_points

TRAJ = np.array([[1.0, 0.0], [2.5, -0.1], [4.0, -0.25], [5.5, -0.5], [7.0, -1.0], [8.5, -1.5]])  # x fwd, y left


def test_encode_released_form_and_frame():
    codec = TrajectoryCodec(TextConfig())
    s = codec.encode(TRAJ)
    # text X = -y_ego (right), Y = x_ego (forward); 2 decimals, no spaces, no "-0.00"
    assert s == ("<traj_start>[(0.00,1.00),(0.10,2.50),(0.25,4.00),(0.50,5.50),(1.00,7.00),(1.50,8.50)]"
                 "<traj_end>")
    back = codec.decode(s)
    assert back.shape == (6, 2)
    np.testing.assert_allclose(back, TRAJ, atol=1e-9)
    # a car going left in the ego frame (y > 0) has negative X in the text
    left = codec.encode(np.array([[1.0, 0.5]] * 6))
    assert left.startswith("<traj_start>[(-0.50,1.00)")


def test_roundtrip_random_all_options():
    rng = np.random.default_rng(0)
    ego = np.array([4.0, -0.3, 0.5, 0.0, 0.01, 4.0, 0.0])
    for enc in ("absolute", "delta", "residual"):
        for dec in (1, 2, 3):
            for compact in (False, True):
                codec = TrajectoryCodec(TextConfig(traj_encoding=enc, traj_decimals=dec, compact_tokens=compact))
                for _ in range(50):
                    t = np.cumsum(rng.normal(0, 3, size=(6, 2)), axis=0)
                    back = codec.decode(codec.encode(t, ego), ego)
                    np.testing.assert_allclose(back, t, atol=0.5 * 10 ** -dec + 1e-9)


def test_delta_writes_displacements():
    codec = TrajectoryCodec(TextConfig(traj_encoding="delta"))
    t = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0], [6.0, 0.0]])
    assert codec.encode(t) == "<traj_start>[" + ",".join(["(0.00,1.00)"] * 6) + "]<traj_end>"
    np.testing.assert_allclose(codec.decode(codec.encode(t)), t)


def test_residual_is_zero_at_constant_velocity():
    # ego at vx=4, vy=-1 m/s (ego frame): text-frame step of 0.5 s = (0.50, 2.00); constant velocity writes zeros
    from odvla.platform.eval.baselines import constant_velocity

    ego = np.array([4.0, -1.0, 0.0, 0.0, 0.0, 4.1, 0.0])
    codec = TrajectoryCodec(TextConfig(traj_encoding="residual"))
    cv = constant_velocity(ego[None])[0]
    assert codec.encode(cv, ego) == "<traj_start>[" + ",".join(["(0.00,0.00)"] * 6) + "]<traj_end>"
    braking = cv - np.array([[0.1 * k * k, 0.0] for k in range(1, 7)])  # falls behind quadratically
    s = codec.encode(braking, ego)
    assert s.startswith("<traj_start>[(0.00,-0.10),(0.00,-0.30),(0.00,-0.50)")
    np.testing.assert_allclose(codec.decode(s, ego), braking, atol=1e-9)
    past = np.array([[-8.0, 2.0], [-6.0, 1.5], [-4.0, 1.0], [-2.0, 0.5]])
    assert codec.encode_history(past, ego) == "[(0.00,0.00),(0.00,0.00),(0.00,0.00),(0.00,0.00)]"
    assert "minus the displacement" in system_prompt(TextConfig(traj_encoding="residual"))
    with pytest.raises(ValueError, match="needs the row's ego_state"):
        codec.encode(cv)
    with pytest.raises(ValueError, match="needs the row's ego_state"):
        codec.decode(s)
    with pytest.raises(ValueError, match="finite"):
        codec.encode(cv, np.full(7, np.nan))


def test_compact_form():
    codec = TrajectoryCodec(TextConfig(compact_tokens=True))
    s = codec.encode(np.array([[1.23, 0.5]] * 6))
    assert s == "<traj_start>" + "<-0><.50><+1><.23>" * 6 + "<traj_end>"
    assert len(codec.tokens()) == 2 + 200 + 100
    with pytest.raises(ValueError, match="compact"):
        codec.encode(np.array([[150.0, 0.0]] * 6))


@pytest.mark.parametrize("bad, msg", [
    ("[(0.00,1.00)]", "expected '<traj_start>'"),
    ("<traj_start>[(0.00,1.00),(0.10,2.50)]<traj_end>", "only 2 waypoints"),
    ("<traj_start>[(0.00,1.00),(0.10,2.5),(0.25,4.00),(0.50,5.50),(1.00,7.00),(1.55,8.50)]<traj_end>",
     "waypoint 2 of 6, y: expected a number with 2 decimals"),
    ("<traj_start>[(0.00,1.00),(0.10 2.50),(0.25,4.00),(0.50,5.50),(1.00,7.00),(1.55,8.50)]<traj_end>",
     "waypoint 2 of 6, after x: expected ','"),
    ("<traj_start>[(0.00,1.00),(0.10,2.50),(0.25,4.00),(0.50,5.50),(1.00,7.00),(1.55,8.50),(1.00,9.00)]<traj_end>",
     "more than 6 waypoints"),
    ("<traj_start>[(0.00,1.00),(0.10,2.50),(0.25,4.00),(0.50,5.50),(1.00,7.00),(1.55,8.50)]", "end of the trajectory"),
    ("<traj_start>[(0.00,1.00),(0.10,2.50),(0.25,4.00),(0.50,5.50),(1.00,7.00),(1.55,8.50)]<traj_end> ok",
     "unexpected text after"),
    ("<traj_start>[(0.00,1.00),(0.10,2.50),(0.25,4.00),(0.50,5.50),(1.00,7.00),(01.55,8.50)]<traj_end>",
     "waypoint 6 of 6, x: expected a number"),
])
def test_strict_parser_errors(bad, msg):
    codec = TrajectoryCodec(TextConfig())
    with pytest.raises(TrajectoryParseError, match=msg.replace("(", r"\(").replace(")", r"\)")) as ei:
        codec.decode(bad)
    assert ei.value.position is not None


def test_compact_parser_errors():
    codec = TrajectoryCodec(TextConfig(compact_tokens=True))
    good = codec.encode(TRAJ)
    np.testing.assert_allclose(codec.decode(good), TRAJ, atol=0.006)
    with pytest.raises(TrajectoryParseError, match="fraction token"):
        codec.decode(good.replace("<.00>", "", 1))
    with pytest.raises(TrajectoryParseError, match="only 11 numbers"):
        codec.decode(good[: good.rfind("<+")] + "<traj_end>")


def test_encode_rejects_bad_shapes():
    codec = TrajectoryCodec(TextConfig())
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        codec.encode(np.full((6, 2), np.nan))
    with pytest.raises(ValueError, match="traj_encoding"):
        TrajectoryCodec(TextConfig(traj_encoding="polar"))


def test_point_spans_and_find():
    for compact in (False, True):
        codec = TrajectoryCodec(TextConfig(compact_tokens=compact))
        s = "Sure: " + codec.encode(TRAJ)
        spans = codec.point_spans(codec.find(s))
        assert len(spans) == 6
        assert codec.find("no trajectory here") is None


def test_format_points_text_frame():
    assert format_points(np.array([[-1.0, 0.0], [0.0, 2.0]])) == "[(0.00,-1.00),(-2.00,0.00)]"
    assert format_points(np.zeros((0, 2))) == "[]"


def test_prompt_planning():
    ego = np.array([3.73, -0.0, 0.19, 0.02, -0.01, 3.77, -0.06])
    past = np.array([[-7.21, -0.01], [-5.39, -0.01], [-3.58, 0.0], [-1.79, 0.0]])
    s = build_user_turn("planning", "", ego, 2, past, np.ones(4))
    lines = s.split("\n")
    assert lines[0] == "Scene information: <scene_start><SCENE><scene_end>"
    assert lines[1] == "Object-wise tracking information: <track_start><TRACK><track_end>"
    assert lines[2] == "Map information: <map_start><MAP><map_end>"
    assert lines[3] == "Ego states:"
    assert lines[4] == "- Velocity (vx,vy): (0.00,3.73)"
    assert lines[5] == "- Heading Angular Velocity (v_yaw): (-0.01)"
    assert lines[6] == "- Acceleration (ax,ay): (-0.02,0.19)"
    assert lines[8] == "- Heading Speed: (3.77)"
    assert lines[10] == "Historical trajectory (last 2 seconds): [(0.01,-7.21),(0.01,-5.39),(0.00,-3.58),(0.00,-1.79)]"
    assert lines[11] == "Mission goal: keep forward"
    assert lines[12] == "Planning trajectory:"
    assert "Mission goal: turn right" in build_user_turn("planning", "", ego, 0, past, np.ones(4))
    # invalid history points are left out, not invented
    s2 = build_user_turn("planning", "", ego, 1, past, np.array([0, 0, 1, 1.0]))
    assert "(last 2 seconds): [(0.00,-3.58),(0.00,-1.79)]" in s2 and "turn left" in s2


def test_prompt_other_tasks_and_errors():
    s = build_user_turn("qa", "How many cars are ahead?", np.zeros(7), 2, np.zeros((4, 2)), np.ones(4))
    assert s.endswith("Map information: <map_start><MAP><map_end>\nHow many cars are ahead?")
    assert "Ego states" not in s
    with pytest.raises(ValueError, match="non-empty question"):
        build_user_turn("qa", "", np.zeros(7), 2, np.zeros((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="unknown task"):
        build_user_turn("chitchat", "hi", np.zeros(7), 2, np.zeros((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="command index"):
        build_user_turn("planning", "", np.zeros(7), 3, np.zeros((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="ego_state"):
        build_user_turn("planning", "", np.zeros(6), 2, np.zeros((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="placeholder"):
        build_user_turn("qa", "what is <SCENE>?", np.zeros(7), 2, np.zeros((4, 2)), np.ones(4))
    assert "X points to the right, Y points forward" in SYSTEM_PROMPT
    assert "displacement" in system_prompt(TextConfig(traj_encoding="delta"))


def test_history_speaks_the_answer_encoding():
    # the reference form by default; with delta the last displacement is the move into the ego's position, so a
    # constant-velocity plan repeats it; compact history uses the answer's number tokens
    past = np.array([[-8.0, 0.1], [-6.0, 0.05], [-4.0, 0.0], [-2.0, 0.0]])
    plain = build_user_turn("planning", "", np.zeros(7), 2, past, np.ones(4))
    assert "Historical trajectory (last 2 seconds): [(-0.10,-8.00),(-0.05,-6.00),(0.00,-4.00),(0.00,-2.00)]" in plain
    delta = TrajectoryCodec(TextConfig(traj_encoding="delta"))
    s = build_user_turn("planning", "", np.zeros(7), 2, past, np.ones(4), codec=delta)
    assert "[(0.05,2.00),(0.05,2.00),(0.00,2.00),(0.00,2.00)]" in s
    cv_plan = delta.encode(np.array([[2.0 * k, 0.0] for k in range(1, 7)]))
    assert cv_plan == "<traj_start>[" + ",".join(["(0.00,2.00)"] * 6) + "]<traj_end>"
    compact = TrajectoryCodec(TextConfig(traj_encoding="delta", compact_tokens=True))
    s = build_user_turn("planning", "", np.zeros(7), 2, past, np.array([0, 0, 1, 1.0]), codec=compact)
    assert "Historical trajectory (last 2 seconds): <+0><.00><+2><.00><+0><.00><+2><.00>\n" in s
    with pytest.raises(ValueError, match="non-finite"):
        compact.encode_history(np.array([[np.nan, 0.0]]))


@pytest.mark.parametrize("name", ["absolute", "delta", "residual"])
def test_every_registered_encoding_round_trips(name):
    """Each entry of the encoding registry decodes its own text back to the rounded positions, for plain and
    compact numbers, and tells the system prompt how it writes numbers unless it is the released absolute form."""
    from odvla.model.traj_encodings import TRAJ_ENCODINGS

    assert set(TRAJ_ENCODINGS) == {"absolute", "delta", "residual", "action"}  # action: tests/test_action_codebook.py
    rng = np.random.default_rng(7)
    ego = np.array([6.0, 0.4, 0.1, 0.0, 0.02, 6.01, 0.0])
    for compact in (False, True):
        codec = TrajectoryCodec(TextConfig(traj_encoding=name, compact_tokens=compact))
        traj = np.cumsum(rng.normal([3.0, 0.0], [0.3, 0.2], (6, 2)), axis=0)
        np.testing.assert_allclose(codec.decode(codec.encode(traj, ego), ego), np.round(traj, 2), atol=1e-9)
    note = TRAJ_ENCODINGS[name].prompt_note
    assert (note == "") == (name == "absolute")
    assert system_prompt(TextConfig(traj_encoding=name)).endswith(note)
