"""Readers of the public instruction sets: each on a small file in its exact public layout, on malformed files
(error names file and record), and joined to shard samples with unmatched records counted."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from odvla.platform.data.conversations.build import build_instructions
from odvla.platform.data.conversations.drivelm import read_drivelm
from odvla.platform.data.conversations.gpt_driver import read_gpt_driver
from odvla.platform.data.conversations.llava import read_llava
from odvla.platform.data.conversations.nucaption import read_nucaption
from odvla.platform.data.conversations.nuscenes_qa import read_nuscenes_qa
from odvla.platform.data.conversations.nux import read_nux
from odvla.platform.data.conversations.safe_pickle import safe_load
from odvla.platform.data.conversations.schema import (CONVERSATION_SCHEMA, ConversationFormatError,
                                                      read_conversations, records_to_table)
from odvla.platform.data.conversations.tod3cap import read_tod3cap
from test_conversations_support import write_shards


def dump(path, obj):
    path.write_text(json.dumps(obj))
    return path


def turns(rec):
    return [(t["from"], t["value"]) for t in rec["turns"]]


# ---------------------------------------------------------------------------------------------------- formats
def test_nuscenes_qa(tmp_path):
    f = dump(tmp_path / "NuScenes_train_questions.json", {"info": {"split": "train"}, "questions": [
        {"sample_token": "s1", "question": "Are there any cars?", "answer": "yes", "template_type": "exist",
         "num_hop": 0},
        {"sample_token": "s3", "question": "How many cars are there?", "answer": 2, "template_type": "count",
         "num_hop": 1}]})
    recs = read_nuscenes_qa(f)
    assert [r["sample_token"] for r in recs] == ["s1", "s3"]
    assert turns(recs[1]) == [("human", "How many cars are there?"), ("gpt", "2")]
    assert {r["task"] for r in recs} == {"external"}
    assert json.loads(recs[1]["meta"]) == {"num_hop": 1, "template_type": "count"}
    records_to_table(recs)  # fits the schema


def test_nuscenes_qa_malformed_names_file_and_record(tmp_path):
    f = dump(tmp_path / "q.json", {"questions": [{"sample_token": "s1", "question": "q?", "answer": "a"},
                                                 {"sample_token": "s1", "answer": "a"}]})
    with pytest.raises(ConversationFormatError, match=r"q\.json: record 1: missing field 'question'"):
        read_nuscenes_qa(f)
    bad = tmp_path / "broken.json"
    bad.write_text('{"questions": [')
    with pytest.raises(ConversationFormatError, match=r"broken\.json: record at line 1 .*invalid JSON"):
        read_nuscenes_qa(bad)
    with pytest.raises(ConversationFormatError, match='"questions" list'):
        read_nuscenes_qa(dump(tmp_path / "top.json", [1, 2]))


def test_nux(tmp_path):
    f = dump(tmp_path / "nux.json", {"s1": {"narration": "The car slows down.", "reasoning": "A pedestrian crosses."}})
    recs = read_nux(f)
    assert [r["record_id"] for r in recs] == ["s1/narration", "s1/reasoning"]
    assert turns(recs[1])[1] == ("gpt", "A pedestrian crosses.")
    with pytest.raises(ConversationFormatError, match=r"record 1 \(s2\): field 'reasoning' is int"):
        read_nux(dump(tmp_path / "bad.json", {"s1": {"narration": "a", "reasoning": "b"},
                                              "s2": {"narration": "a", "reasoning": 3}}))


def test_nucaption(tmp_path):
    f = dump(tmp_path / "nuCaptionLidarView_train.json", [
        {"sample_token": "s1", "view": "CAM_FRONT_LEFT", "question": "Describe the scene.", "answer": "A road."},
        {"sample_token": "v1", "view": "CAM_BACK", "question": "What is in the back view?", "answer": "A bus."}])
    recs = read_nucaption(f)
    assert turns(recs[0])[0] == ("human", "In the front left view: Describe the scene.")
    assert turns(recs[1])[0] == ("human", "What is in the back view?")
    assert json.loads(recs[0]["meta"]) == {"view": "CAM_FRONT_LEFT"}
    with pytest.raises(ConversationFormatError, match=r"record 0: unknown view 'CAM_TOP'"):
        read_nucaption(dump(tmp_path / "b.json", [{"sample_token": "s", "view": "CAM_TOP", "question": "q",
                                                   "answer": "a"}]))


def test_drivelm(tmp_path):
    f = dump(tmp_path / "v1_1_train_nus.json", {"scene-a": {
        "scene_description": "Urban street.",
        "key_frames": {"s1": {"key_object_infos": {"<c1,CAM_FRONT,800.0,500.0>": {"Category": "Vehicle"}},
                              "QA": {"perception": [{"Q": "What are the important objects?", "A": "A car.",
                                                     "C": None, "con_up": [], "con_down": [], "cluster": [],
                                                     "layer": []}],
                                     "prediction": [], "planning": [{"Q": "What should the ego do?",
                                                                     "A": "Keep going."}],
                                     "behavior": [{"Q": "Predict the behavior.", "A": "Going straight."}]}}}}})
    recs = read_drivelm(f)
    assert [json.loads(r["meta"])["category"] for r in recs] == ["perception", "planning", "behavior"]
    assert turns(recs[0]) == [("human", "What are the important objects?"), ("gpt", "A car.")]
    with pytest.raises(ConversationFormatError, match=r"scene scene-a key frame s1 planning\[0\]: missing field 'A'"):
        read_drivelm(dump(tmp_path / "b.json", {"scene-a": {"key_frames": {"s1": {"QA": {
            "planning": [{"Q": "q"}]}}}}}))


def test_llava_json_and_jsonl(tmp_path):
    data = [{"id": "s1_qa_0", "conversations": [{"from": "human", "value": "<image>\nWhat is ahead?"},
                                                {"from": "gpt", "value": "A car."},
                                                {"from": "human", "value": "Is it moving?"},
                                                {"from": "gpt", "value": "Yes."}]},
            {"qa_id": "s3_trajectory", "sample_id": "s3", "conversations": [{"from": "human", "value": ""},
                                                                           {"from": "gpt", "value": ""}]}]
    recs = read_llava(dump(tmp_path / "conv.json", data))
    assert [r["sample_token"] for r in recs] == ["s1", "s3"]
    assert [r["task"] for r in recs] == ["external", "planning"]
    assert len(recs[0]["turns"]) == 4
    jl = tmp_path / "conv.jsonl"
    jl.write_text("\n".join(json.dumps(d) for d in data) + "\n")
    assert read_llava(jl) == recs
    jl.write_text(json.dumps(data[0]) + "\n{oops\n")
    with pytest.raises(ConversationFormatError, match=r"conv\.jsonl: record 1 \(line 2\)"):
        read_llava(jl)
    bad = [{"id": "s1", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]}]
    with pytest.raises(ConversationFormatError, match=r"record 0: turn 0 is from 'gpt', expected 'human'"):
        read_llava(dump(tmp_path / "b.json", bad))


def test_tod3cap_ties_annotation_to_sample_and_agent(tmp_path):
    f = dump(tmp_path / "tod3cap_train.json", {
        "ann-1": {"final_caption": "A white sedan driving ahead.", "attribute_caption": "A white sedan.",
                  "depth_caption": "About 10 m away.", "localization_caption": "Front left.",
                  "motion_caption": "Moving forward.", "map_caption": "In the left lane."},
        "ann-x": {"final_caption": "Unknown box."}})
    annotations = {"ann-1": ("s1", "i-car1")}
    recs = read_tod3cap(f, annotations, lambda s, i: np.array([10.0, 3.0]) if (s, i) == ("s1", "i-car1") else None)
    r = recs[0]
    assert (r["sample_token"], r["instance_token"]) == ("s1", "i-car1")
    assert turns(r)[0] == ("human", "Describe the object at (-3.00,10.00).")  # text frame (X right, Y forward)
    assert len(r["turns"]) == 12
    assert recs[1]["sample_token"] == ""  # not in the dataroot: counted as unmatched at the join
    with pytest.raises(ConversationFormatError, match=r"record 0 \(ann-2\): missing text field 'final_caption'"):
        read_tod3cap(dump(tmp_path / "b.json", {"ann-2": {"attribute_caption": "x"}}), {})


def gpt_driver_info(fut_text, cmd=(0, 0, 1)):
    return {"gt_boxes": np.zeros((2, 7), np.float32), "gt_names": np.array(["car", "pedestrian"]),
            "gt_agent_fut_trajs": np.zeros((2, 12), np.float32), "gt_agent_fut_masks": np.ones((2, 6), np.float32),
            "gt_ego_lcf_feat": np.arange(9, dtype=np.float32), "gt_ego_his_trajs": np.zeros((5, 2), np.float32),
            "gt_ego_his_diff": np.zeros((4, 2), np.float32),
            "gt_ego_fut_trajs": np.asarray(fut_text, np.float32), "gt_ego_fut_cmd": np.asarray(cmd, np.float32)}


def test_gpt_driver_planning_record(tmp_path):
    fut = np.concatenate([np.zeros((1, 2)), np.stack([np.arange(1, 7) * -0.5, np.arange(1, 7) * 2.0], 1)])
    f = tmp_path / "cached_nuscenes_info.pkl"
    f.write_bytes(pickle.dumps({"s1": gpt_driver_info(fut, (0, 1, 0))}))
    split = dump(tmp_path / "split.json", {"train": ["s1"], "val": []})
    (rec,) = read_gpt_driver(f, split)
    assert rec["task"] == "planning" and turns(rec) == [("human", ""), ("gpt", "")]
    target = np.asarray(rec["target_traj"]).reshape(6, 2)
    # text frame (X right, Y forward) -> ego frame (x forward, y left): x = Y, y = -X
    np.testing.assert_allclose(target[:, 0], np.arange(1, 7) * 2.0)
    np.testing.assert_allclose(target[:, 1], np.arange(1, 7) * 0.5)
    meta = json.loads(rec["meta"])
    assert meta["command"] == "turn left" and meta["split"] == "train"
    assert meta["reference_answer"].startswith("[(-0.50,2.00),(-1.00,4.00)")
    f.write_bytes(pickle.dumps({"s1": gpt_driver_info(fut[:5])}))
    with pytest.raises(ConversationFormatError, match=r"record 0 \(s1\): field 'gt_ego_fut_trajs' has shape \(5, 2\)"):
        read_gpt_driver(f)
    f.write_bytes(pickle.dumps({"s1": gpt_driver_info(fut, (1, 1, 0))}))
    with pytest.raises(ConversationFormatError, match="not one-hot"):
        read_gpt_driver(f)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo exploited > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps({"s1": {"gt_ego_fut_trajs": _Exploit()}}))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: refused to load global (posix|os|nt)\.system"):
        safe_load(f)
    f.write_bytes(pickle.dumps({"x": np.arange(3), "y": [np.float32(1.5), "a", (1, 2)]}, protocol=2))
    loaded = safe_load(f)
    assert loaded["x"].tolist() == [0, 1, 2] and loaded["y"][2] == (1, 2)
    f.write_bytes(b"\x80\x04garbage")
    with pytest.raises(pickle.UnpicklingError, match="evil.pkl: not a readable pickle"):
        safe_load(f)


# ------------------------------------------------------------------------------------------- join to shards
def test_import_counts_unmatched_and_writes_per_split(tmp_path):
    shards = write_shards(tmp_path / "shards")
    qa = dump(tmp_path / "qa.json", {"questions": [
        {"sample_token": t, "question": f"q{i}", "answer": "a"} for i, t in enumerate(["s1", "v1", "zz", "s2"])]})
    llava = dump(tmp_path / "l.json", [{"id": "nope_0", "conversations": [{"from": "human", "value": "q"},
                                                                          {"from": "gpt", "value": "a"}]}])
    report = build_instructions(shards, {"nuscenes_qa": qa, "llava": llava}, generated=False)
    st = report["sources"]["nuscenes_qa"]
    assert (st["records"], st["matched"], st["unmatched"]) == (4, 3, 1)
    assert st["unmatched_examples"] == ["qa.json#2"]
    assert report["sources"]["llava"]["unmatched"] == 1
    conv = shards / "conversations"
    train = read_conversations(conv / "train" / "nuscenes_qa.parquet")
    assert sorted(train.column("sample_token").to_pylist()) == ["s1", "s2"]
    assert read_conversations(conv / "val" / "nuscenes_qa.parquet").num_rows == 1
    assert not (conv / "train" / "llava.parquet").exists()
    assert report["counts"]["train"]["nuscenes_qa"] == {"external": 2}
    assert pq.read_schema(conv / "train" / "nuscenes_qa.parquet").metadata == CONVERSATION_SCHEMA.metadata
    assert json.loads((conv / "manifest.json").read_text())["sources"]["nuscenes_qa"]["unmatched"] == 1


def test_tod3cap_import_uses_dataroot_annotation_table(tmp_path):
    shards = write_shards(tmp_path / "shards")
    root = tmp_path / "nusc"
    (root / "v1.0-mini").mkdir(parents=True)
    dump(root / "v1.0-mini" / "sample_annotation.json", [
        {"token": "ann-1", "sample_token": "s1", "instance_token": "i-ped1"},
        {"token": "ann-2", "sample_token": "other", "instance_token": "i-x"}])
    f = dump(tmp_path / "tod3cap.json", {"ann-1": {"final_caption": "A pedestrian."},
                                         "ann-2": {"final_caption": "x"}, "ann-3": {"final_caption": "y"}})
    with pytest.raises(ValueError, match="--dataroot"):
        build_instructions(shards, {"tod3cap": f}, generated=False)
    report = build_instructions(shards, {"tod3cap": f}, generated=False, dataroot=root, version="v1.0-mini")
    assert report["sources"]["tod3cap"]["unmatched"] == 2
    (rec,) = read_conversations(shards / "conversations" / "train" / "tod3cap.parquet").to_pylist()
    # i-ped1 sits at ego (6, -6) in the shard row -> text frame (6.00, 6.00)
    assert rec["turns"][0]["value"] == "Describe the object at (6.00,6.00)."


def test_conversation_file_of_other_version_is_refused(tmp_path):
    import pyarrow as pa

    t = records_to_table([]).replace_schema_metadata({b"odvla.conversations_version": b"0"})
    pq.write_table(t, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"x\.parquet: conversation schema version '0'"):
        read_conversations(tmp_path / "x.parquet")
    assert isinstance(t, pa.Table)


def test_gpt_driver_import_reports_split_mismatch(tmp_path):
    shards = write_shards(tmp_path / "shards")
    fut = np.zeros((7, 2))
    f = tmp_path / "cached_nuscenes_info.pkl"
    f.write_bytes(pickle.dumps({t: gpt_driver_info(fut) for t in ("s1", "v1", "gone")}))
    split = dump(tmp_path / "split.json", {"train": ["s1", "v1"], "val": []})  # v1 is a val sample in the shards
    report = build_instructions(shards, {"gpt_driver": f}, generated=False, gpt_driver_split=split)
    st = report["sources"]["gpt_driver"]
    assert (st["matched"], st["unmatched"], st["split_mismatch"]) == (2, 1, 1)
    assert report["counts"]["val"]["gpt_driver"] == {"planning": 1}
