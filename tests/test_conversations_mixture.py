"""Stage mixtures: conversations -> single-turn examples sampled by weight, planning rows per sample, counts in
the metadata; and the `odvla instructions` command end to end."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from odvla.platform.cli.main import main
from odvla.platform.config import load_config
from odvla.platform.data.conversations.build import build_instructions
from odvla.platform.data.conversations.mixture import build_examples, examples_for_stage, mixture_counts
from odvla.platform.data.conversations.schema import read_conversations
from test_conversations_support import write_shards

LLAVA = [{"id": "s1_0", "conversations": [{"from": "human", "value": "<image>\nWhat is ahead?"},
                                          {"from": "gpt", "value": "A car."},
                                          {"from": "human", "value": "Is it moving?"},
                                          {"from": "gpt", "value": "Yes."}]}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    shards = write_shards(tmp / "shards")
    (tmp / "l.json").write_text(json.dumps(LLAVA))
    build_instructions(shards, {"llava": tmp / "l.json"}, seed=0)
    return shards


def test_examples_columns_planning_rows_and_counts(store):
    t = build_examples(store, "train", {"planning": 1.0}, seed=0)
    assert t.column_names == ["sample_token", "task", "question", "answer"]
    assert sorted(t.column("sample_token").to_pylist()) == ["s1", "s2", "s3"]
    assert set(t.column("question").to_pylist()) == {""} and set(t.column("answer").to_pylist()) == {""}
    assert mixture_counts(t) == {"planning": {"weight": 1.0, "available": 3, "selected": 3}}


def test_weights_select_round_w_times_n(store):
    conv = read_conversations(store / "conversations" / "train" / "generated.parquet").to_pylist()
    n = Counter(r["task"] for r in conv)
    mix = {"qa": 1.0, "caption_scene": 2.0, "interaction": 0.5, "caption_agent": 0.0}
    t = build_examples(store, "train", mix, seed=3)
    got = Counter(t.column("task").to_pylist())
    assert got == Counter({"qa": n["qa"], "caption_scene": 2 * n["caption_scene"],
                           "interaction": round(0.5 * n["interaction"])})
    counts = mixture_counts(t)
    assert counts["caption_agent"] == {"weight": 0.0, "available": n["caption_agent"], "selected": 0}
    assert counts["interaction"]["selected"] == round(0.5 * n["interaction"])
    # caption_scene at weight 2: every example exactly twice
    scene = Counter((r["sample_token"], r["question"]) for r in t.to_pylist() if r["task"] == "caption_scene")
    assert set(scene.values()) == {2}
    assert build_examples(store, "train", mix, seed=3).equals(t)
    assert not build_examples(store, "train", mix, seed=4).equals(t)


def test_external_multi_turn_is_split_and_image_tag_stripped(store):
    t = build_examples(store, "train", {"external": 1.0}, seed=0)
    assert sorted(zip(t.column("question").to_pylist(), t.column("answer").to_pylist())) == [
        ("Is it moving?", "Yes."), ("What is ahead?", "A car.")]
    assert set(t.column("sample_token").to_pylist()) == {"s1"}


def test_unknown_task_and_bad_weight_are_named(store):
    with pytest.raises(ValueError, match=r"unknown tasks \['captions'\]"):
        build_examples(store, "train", {"captions": 1.0}, seed=0)
    with pytest.raises(ValueError, match=r"stage.mixture.qa = -1"):
        build_examples(store, "train", {"qa": -1}, seed=0)


def test_missing_generated_file_is_built_in_memory(tmp_path, store):
    shards = write_shards(tmp_path / "fresh")
    t = build_examples(shards, "val", {"interaction": 1.0, "qa": 1.0, "external": 1.0}, seed=0)
    counts = mixture_counts(t)
    assert counts["interaction"]["selected"] > 0 and counts["qa"]["selected"] > 0
    assert counts["external"] == {"weight": 1.0, "available": 0, "selected": 0}
    # the same examples as from the written store
    written = build_examples(store, "val", {"interaction": 1.0, "qa": 1.0, "external": 1.0}, seed=0)
    assert t.equals(written)


def test_stage_presets_build(store):
    for stage in ("stage1", "stage2", "stage2_5", "stage3"):
        cfg = load_config(model="tiny", stage=stage, overrides=[f"data.shards={store}"])
        t = examples_for_stage(cfg.data, cfg.stage, cfg.train.seed, "train")
        assert set(t.column("task").to_pylist()) == {k for k, w in cfg.stage.mixture.items() if w > 0}, stage


def test_cli_instructions(tmp_path, capsys):
    shards = write_shards(tmp_path / "shards")
    (tmp_path / "qa.json").write_text(json.dumps({"questions": [
        {"sample_token": "s1", "question": "Is there a car?", "answer": "yes"},
        {"sample_token": "not-here", "question": "?", "answer": "no"}]}))
    rc = main(["instructions", "--shards", str(shards), "--nuscenes-qa", str(tmp_path / "qa.json"), "--seed", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "train  generated    caption_agent=4" in out
    assert "train  nuscenes_qa  external=1" in out
    assert "import nuscenes_qa: 2 records, 1 matched to shard samples, 1 name samples not in the shards" in out
    assert json.loads((shards / "conversations" / "manifest.json").read_text())["seed"] == 2
    (tmp_path / "bad.json").write_text('{"questions": [{"sample_token": "s1"}]}')
    rc = main(["instructions", "--shards", str(shards), "--nuscenes-qa", str(tmp_path / "bad.json")])
    assert rc == 2
    assert "bad.json: record 0: missing field 'question'" in capsys.readouterr().err


def test_conversations_of_re_prepared_shards_are_refused(tmp_path):
    from test_conversations_support import default_rows

    shards = write_shards(tmp_path / "shards")
    build_instructions(shards, seed=0)
    rows = [r for r in default_rows() if r["sample_token"] != "s2"]
    import shutil

    shutil.rmtree(shards / "train")
    write_shards(shards, rows)
    with pytest.raises(ValueError, match=r"conversation samples are not in the 'train' shards .*s2.*re-run"):
        build_examples(shards, "train", {"qa": 1.0}, seed=0)


def test_prepare_hook_adds_instruction_options_without_clashes(tmp_path, capsys):
    import argparse

    from odvla.platform.cli.cmd_instructions import add_instruction_args, print_report, run_instructions

    p = argparse.ArgumentParser()  # what `odvla prepare` already has
    p.add_argument("--dataroot")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instructions", action="store_true")
    add_instruction_args(p, standalone=False)
    shards = write_shards(tmp_path / "shards")
    args = p.parse_args(["--out", str(shards), "--instructions", "--instructions-seed", "5"])
    print_report(run_instructions(args, shards))
    assert "val    generated" in capsys.readouterr().out
    assert json.loads((shards / "conversations" / "manifest.json").read_text())["seed"] == 5
