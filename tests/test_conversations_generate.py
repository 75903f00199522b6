"""Generated captions / QA / interaction / planning records: answers agree with the annotations, numbers are the
waypoint codec's text, templates vary and are deterministic per seed."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from odvla.model.config import TextConfig
from odvla.model.traj_codec import TrajectoryCodec, format_points
from odvla.platform.data.conversations.generate import generate_from_table, read_shard_split
from odvla.platform.data.conversations.scene_view import views_from_table
from odvla.platform.data.shard_schema import SCHEMA
from test_conversations_support import default_rows, shard_row, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["record_id"]: r for r in table.to_pylist()}


def qa_text(rec) -> tuple[str, str]:
    return rec["turns"][0]["value"], rec["turns"][1]["value"]


def test_every_task_is_generated_and_fits_the_schema(shards):
    table = generate_from_table(read_shard_split(shards, "train"), seed=0)
    tasks = set(table.column("task").to_pylist())
    assert tasks == {"caption_scene", "caption_agent", "caption_map", "qa", "interaction", "planning"}
    assert set(table.column("source").to_pylist()) == {"generated"}
    for r in table.to_pylist():
        roles = [t["from"] for t in r["turns"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and roles
        if r["task"] != "planning":
            assert r["turns"][0]["value"] and r["turns"][1]["value"]


def test_answers_follow_the_annotations(shards):
    recs = by_id(generate_from_table(read_shard_split(shards, "train"), seed=0))
    # s1: pedestrian at ego (6, -6) is the nearest detection-class agent (the non-detection object at 3,3 is ignored)
    q, a = qa_text(recs["s1/qa/nearest"])
    assert a == "The nearest is a pedestrian at (6.00,6.00), 8.49 m ahead on the right."
    # s3: a stationary car 8 m ahead inside the ego path is the reason of the action answer, command = turn right
    q, a = qa_text(recs["s3/qa/action"])
    assert a.startswith("The ego vehicle should turn right") and "a car is 8.00 m ahead in its path" in a
    # s2: stopped ego, empty road
    assert "stay stopped" in qa_text(recs["s2/qa/action"])[1]
    assert "s2/caption_map" not in recs  # no map elements -> no map caption
    assert "s2/qa/nearest" not in recs
    # agent caption names class, position (codec text frame), motion
    q, a = qa_text(recs["s1/caption_agent/i-car1"])
    assert "(-3.00,10.00)" in q and a.startswith("It is a car at (-3.00,10.00)") and "4.00 m/s" in a



def test_counting_answers_match_the_boxes():
    from odvla.model.constants import DETECTION_CLASSES
    from odvla.platform.data.conversations.scene_view import CLASS_WORDS

    plural_to_cls = {w[1]: c for c, w in CLASS_WORDS.items()}
    rows = [shard_row(f"c{i}", "train", [{"xy": (float(d), 1.0), "cls": k, "inst": f"a{j}"}
                                         for j, (d, k) in enumerate([(5, 0), (15, 0), (25, 8), (45, 0), (28, 8)])])
            for i in range(12)]
    checked = 0
    for r in generate_from_table(pa.Table.from_pylist(rows, schema=SCHEMA), seed=1).to_pylist():
        if not r["record_id"].endswith("/qa/count"):
            continue
        q, a = qa_text(r)
        cls = next(c for w, c in plural_to_cls.items() if f" {w} " in f" {q} ")
        radius = float(re.search(r"(\d+\.\d+) m", q).group(1))
        boxes = [(d, k) for d, k in [(5, 0), (15, 0), (25, 8), (45, 0), (28, 8)]]
        want = sum(1 for d, k in boxes if DETECTION_CLASSES[k] == cls and np.hypot(d, 1.0) <= radius)
        assert re.match(rf"There (is|are) {want} ", a), (q, a)
        checked += 1
    assert checked == 12


def test_interaction_waypoints_are_codec_text_and_respect_masks(shards):
    recs = by_id(generate_from_table(read_shard_split(shards, "train"), seed=0))
    row = default_rows()[0]
    fut = np.asarray(row["agent_future"], np.float32).reshape(-1, 6, 2)
    inst = row["agent_instance"]
    _, a = qa_text(recs["s1/interaction/i-car1"])
    assert a == format_points(fut[inst.index("i-car1")])
    # the same text the planning codec would write inside <traj_start> ... <traj_end>
    assert TrajectoryCodec(TextConfig()).encode(fut[0]) == f"<traj_start>{a}<traj_end>"
    val = by_id(generate_from_table(read_shard_split(shards, "val"), seed=0))
    _, a = qa_text(val["v1/interaction/i-ped9"])
    assert a.startswith("Over the next 1.50 s: [") and a.count("(") == 3  # only the 3 valid future steps
    q, a = qa_text(recs["s3/interaction_close/i-car3"])
    assert format_points(np.stack([np.arange(1, 7) * 2.5, np.zeros(6)], 1)) in q  # the ego plan is in the question
    assert a.startswith("Yes.")


def test_planning_record_carries_the_recorded_future(shards):
    recs = by_id(generate_from_table(read_shard_split(shards, "train"), seed=0))
    p = recs["s1/planning"]
    np.testing.assert_allclose(np.asarray(p["target_traj"]).reshape(6, 2)[:, 0], np.arange(1, 7) * 2.5)
    assert p["target_mask"] == [1.0] * 6


def test_deterministic_per_seed_and_templates_vary():
    rows = [shard_row(f"t{i}", "train", [{"xy": (5.0 + i, 2.0), "v": (3.0, 0.0), "cls": 0, "inst": f"a{i}"}])
            for i in range(24)]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    a, b = generate_from_table(table, seed=7), generate_from_table(table, seed=7)
    assert a.equals(b)
    # a sample's text does not depend on the other samples
    single = generate_from_table(table.slice(5, 1), seed=7)
    assert by_id(single)["t5/qa/action"] == by_id(a)["t5/qa/action"]
    scene_qs = {r["turns"][0]["value"] for r in a.to_pylist() if r["task"] == "caption_scene"}
    assert len(scene_qs) >= 3
    other = generate_from_table(table, seed=8)
    assert [r["turns"] for r in other.to_pylist()] != [r["turns"] for r in a.to_pylist()]


def test_inconsistent_shard_row_names_the_sample():
    row = shard_row("bad-token", "train", [{"xy": (5.0, 2.0), "cls": 0, "inst": "a"}])
    row["agent_instance"] = ["a", "b"]
    with pytest.raises(ValueError, match="shard row of sample bad-token: 2 agent instances for 1 agents"):
        views_from_table(pa.Table.from_pylist([row], schema=SCHEMA))
    row = shard_row("nan-token", "train", [{"xy": (5.0, float("nan")), "cls": 0, "inst": "a"}])
    with pytest.raises(ValueError, match="shard row of sample nan-token: non-finite values in agent_boxes"):
        views_from_table(pa.Table.from_pylist([row], schema=SCHEMA))


def test_shard_of_other_version_is_refused(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "train").mkdir()
    t = pa.Table.from_pylist([default_rows()[0]], schema=SCHEMA).replace_schema_metadata(
        {b"odvla.schema_version": b"0"})
    pq.write_table(t, tmp_path / "train" / "p.parquet")
    with pytest.raises(ValueError, match=r"schema version 0.*p\.parquet"):
        read_shard_split(tmp_path, "train")
