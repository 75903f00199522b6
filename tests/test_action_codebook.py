"""The action-token codebook: K-disk / k-means fitting, closed-loop encoding, files and their errors, the action
encoding in codec, vocabulary and constrained decoding, the codebook's travel through an export, the sweep axis."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from odvla.model.action_codebook import (CODEBOOK_FILE, TOLERANCE_M, VEHICLE_LENGTH, VEHICLE_WIDTH, ActionCodebook,
                                         CodebookError, check_same_codebook, compose, contour, fit_codebook,
                                         fit_kdisk, headings_from_positions, load_codebook, relative)
from odvla.model.config import ModelConfig, TextConfig
from odvla.model.traj_codec import TrajectoryCodec, TrajectoryParseError


def bicycle(n: int, seed: int, vmax: float = 12.0):
    """[n, 6, 2] futures and [n, 4, 2] histories (ego frame at t = 0) of a kinematic bicycle integrated in 0.1-s
    Euler steps from t = -2 s to 3 s: speed 1..vmax m/s at the start, |accel| <= 2 m/s^2 (speed floored at 0),
    |yaw rate| <= 0.3 rad/s, each held over the 5 s."""
    rng = np.random.default_rng(seed)
    futs, pasts = [], []
    for _ in range(n):
        v, a, w = rng.uniform(1.0, vmax), rng.uniform(-2, 2), rng.uniform(-0.3, 0.3)
        pose = np.zeros(3)
        poses = [pose]
        for step in range(1, 51):
            v = max(0.0, v + 0.1 * a)
            pose = compose(pose, np.array([0.1 * v, 0.0, 0.1 * w]))
            if step % 5 == 0:
                poses.append(pose)
        poses = np.asarray(poses)  # t = -2.0, -1.5, ..., 3.0 s; index 4 is now
        rel = relative(np.broadcast_to(poses[4], poses.shape), poses)[:, :2]
        pasts.append(rel[:4])
        futs.append(rel[5:])
    return np.asarray(futs), np.asarray(pasts)


@pytest.fixture(scope="module")
def fitted():
    f, p = bicycle(300, seed=1)
    return fit_codebook(f, np.ones((len(f), 6)), p, np.ones((len(p), 4)), size=1024, method="kdisk", seed=0)


# --------------------------------------------------------------------------------------------------- geometry
def test_contour_distance_is_the_reference_corner_rms():
    """SMART's K-disk distance: sum of squared corner offsets / 4. A pure shift d moves every corner by d (RMS d);
    a turn by theta about the box centre moves each corner by 2 r sin(theta / 2), r = half the box diagonal."""
    base = contour(np.zeros(3))
    np.testing.assert_allclose(base, [[2.4, 1.0], [2.4, -1.0], [-2.4, -1.0], [-2.4, 1.0]])
    d = np.sqrt(((contour(np.array([0.3, 0.0, 0.0])) - base) ** 2).sum() / 4)
    assert d == pytest.approx(0.3)
    theta = 0.1
    r = np.hypot(VEHICLE_LENGTH / 2, VEHICLE_WIDTH / 2)
    d = np.sqrt(((contour(np.array([0.0, 0.0, theta])) - base) ** 2).sum() / 4)
    assert d == pytest.approx(2 * r * np.sin(theta / 2))
    pose, motion = np.array([1.0, 2.0, 0.5]), np.array([3.0, -0.4, 0.1])
    np.testing.assert_allclose(relative(pose, compose(pose, motion)), motion, atol=1e-12)


def test_headings_follow_the_chord_and_hold_when_standing():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [2.0, 1.05], [2.0, 1.1]])
    h = headings_from_positions(pts)
    assert h[0] == 0.0
    assert h[1] == pytest.approx(np.arctan2(1.0, 2.0))  # chord from point 0 to point 2
    assert h[2] == pytest.approx(np.arctan2(1.05, 1.0))
    assert h[3] == pytest.approx(h[2])  # chord 0.1 m < 0.2 m: the ego stands, heading kept
    assert h[4] == pytest.approx(h[3])


# ----------------------------------------------------------------------------------------------------- fitting
def test_kdisk_takes_the_mean_motion_of_each_disk():
    """Three groups of motions far apart (> tolerance), two members each within the tolerance: K-disk with size 3
    returns the three group means, whatever segment it draws first."""
    groups = [np.array([1.0, 0.0, 0.0]), np.array([3.0, 0.2, 0.02]), np.array([6.0, -0.3, -0.05])]
    motions = np.concatenate([[g + [0.01, 0.0, 0.0], g - [0.01, 0.0, 0.0]] for g in groups])
    for seed in range(3):
        ent = fit_kdisk(motions, 3, TOLERANCE_M, seed)
        got = ent[np.argsort(ent[:, 0])]
        np.testing.assert_allclose(got, np.asarray(groups), atol=1e-12)
    # short of entries, the tolerance halves: below 0.01 m each member becomes an entry beside its group's mean
    ent = fit_kdisk(motions, 9, TOLERANCE_M, 0)
    assert sorted(map(tuple, np.round(ent, 12))) == sorted(map(tuple, np.round(np.concatenate([groups, motions]), 12)))
    with pytest.raises(CodebookError, match="only 9 entries in 6 segments, fewer than the codebook size 10"):
        fit_kdisk(motions, 10, TOLERANCE_M, 0)


def test_fitting_is_deterministic_for_a_seed():
    f, p = bicycle(60, seed=2)
    fm, pm = np.ones((60, 6)), np.ones((60, 4))
    for method in ("kdisk", "kmeans"):
        a = fit_codebook(f, fm, p, pm, size=64, method=method, seed=3)
        b = fit_codebook(f, fm, p, pm, size=64, method=method, seed=3)
        assert a.method == method and a.same_entries(b)
    c = fit_codebook(f, fm, p, pm, size=64, method="kdisk", seed=4)
    assert not c.same_entries(fit_codebook(f, fm, p, pm, size=64, method="kdisk", seed=3))  # the seed matters
    auto = fit_codebook(f, fm, p, pm, size=64, method="auto", seed=3)
    rts = {m: auto.fit[f"{m}_train_round_trip"]["mean_l2"] for m in ("kdisk", "kmeans")}
    assert auto.method == min(rts, key=rts.get)  # the smaller round-trip error at the same size is kept


def test_encode_decode_within_tolerance_on_bicycle_trajectories(fitted):
    """Closed-loop encoding: each decoded waypoint is no farther from its target than the chosen entry's contour
    distance (the box centre moves by the mean of its corners' offsets, at most their RMS), and on held-out
    trajectories of the same kinematics the mean error stays within the K-disk tolerance."""
    f, _ = bicycle(100, seed=9)
    for traj in f[:30]:
        r = fitted.encode_future(traj)
        dec = fitted.decode(r.codes)[:, :2]
        assert np.all(np.linalg.norm(dec - traj, axis=1) <= r.distances + 1e-9)
    rt = fitted.round_trip(f)
    assert rt.trajectories == 100 and rt.mean_l2 <= TOLERANCE_M


def test_out_of_range_gets_the_nearest_code_and_is_counted(fitted, caplog, tmp_path):
    far = np.array([[40.0 * k, 0.0] for k in range(1, 7)])  # 80 m/s: beyond every motion of the codebook
    r = fitted.encode_future(far)
    assert r.out_of_range.all() and int(np.argmax(fitted.entries[:, 0])) == r.codes[0]
    rt = fitted.round_trip(np.stack([far, bicycle(1, seed=5)[0][0]]))
    assert (rt.trajectories, rt.out_of_range_trajectories, rt.out_of_range_steps) == (2, 1, 6)
    codec = TrajectoryCodec(TextConfig(traj_encoding="action", action_codebook=str(fitted.save(tmp_path / "c.json")),
                                       action_codebook_size=fitted.size))
    with caplog.at_level(logging.WARNING, logger="odvla.model.traj_codec"):
        codec.encode(far)
    assert codec.out_of_range_steps == 6 and "outside the range of the action codebook" in caplog.text


# ------------------------------------------------------------------------------------------------------- files
def test_files_round_trip_and_bad_files_are_named(fitted, tmp_path):
    path = fitted.save(tmp_path / CODEBOOK_FILE)
    back = load_codebook(path, expected_size=fitted.size)
    assert back.same_entries(fitted) and back.source.endswith(CODEBOOK_FILE)
    with pytest.raises(CodebookError, match=f"{tmp_path / 'none.json'}: file not found"):
        load_codebook(tmp_path / "none.json")
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"format": 1, "entries": [[1, 2')
    with pytest.raises(CodebookError, match=f"{bad}: not a readable JSON"):
        load_codebook(bad)
    data = json.loads(path.read_text())
    data["size"] = fitted.size + 1
    (tmp_path / "size.json").write_text(json.dumps(data))
    with pytest.raises(CodebookError, match=rf"size.json: 'size' says {fitted.size + 1} entries"):
        load_codebook(tmp_path / "size.json")
    with pytest.raises(CodebookError, match=rf"{path}: {fitted.size} entries, but model.text.action_codebook_size "
                                            r"is 2048"):
        load_codebook(path, expected_size=2048)
    other = ActionCodebook(fitted.entries + [0.01, 0.0, 0.0]).save(tmp_path / "other.json")
    with pytest.raises(CodebookError, match=rf"codebook {path} .* differs .* {other}"):
        check_same_codebook(path, other)
    check_same_codebook(path, tmp_path / CODEBOOK_FILE)


# ------------------------------------------------------------------------------------------- codec and vocabulary
def _action_cfg(cb_path, size, **text) -> ModelConfig:
    cfg = ModelConfig()
    cfg.text.traj_encoding, cfg.text.action_codebook, cfg.text.action_codebook_size = "action", str(cb_path), size
    for k, v in text.items():
        setattr(cfg.text, k, v)
    return cfg


def test_codec_writes_eight_tokens_and_a_history_in_the_same_tokens(fitted, tmp_path):
    from odvla.model.prompt import build_user_turn
    from odvla.model.tokenizer import build_tokenizer

    cfg = _action_cfg(fitted.save(tmp_path / "c.json"), fitted.size)
    codec = TrajectoryCodec(cfg.text)
    f, p = bicycle(3, seed=4)
    text = codec.encode(f[0])
    codes = fitted.encode_future(f[0]).codes
    assert text == "<traj_start>" + "".join(f"<act_{k}>" for k in codes) + "<traj_end>"
    np.testing.assert_allclose(codec.decode(text), fitted.decode(codes)[:, :2])
    tok = build_tokenizer(cfg)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == 8
    turn = build_user_turn("planning", "", np.zeros(7), 2, p[0], np.array([0, 1, 1, 1.0]), codec=codec)
    hist = "".join(f"<act_{k}>" for k in fitted.encode_history(p[0][1:]).codes)
    assert f"Historical trajectory (last 2 seconds): {hist}\n" in turn and hist.count("<act_") == 3
    with pytest.raises(TrajectoryParseError, match="only 5 action tokens"):
        codec.decode("<traj_start>" + "<act_1>" * 5 + "<traj_end>")
    with pytest.raises(TrajectoryParseError, match=f"<act_{fitted.size}> is outside the codebook"):
        codec.decode("<traj_start>" + "<act_1>" * 5 + f"<act_{fitted.size}><traj_end>")
    with pytest.raises(TrajectoryParseError, match="more than 6 action tokens"):
        codec.decode("<traj_start>" + "<act_1>" * 7 + "<traj_end>")
    with pytest.raises(ValueError, match="needs model.text.action_codebook"):
        TrajectoryCodec(TextConfig(traj_encoding="action")).encode(f[0])


def test_action_tokens_move_no_qwen25_id():
    """The 2048 action tokens come after Qwen2.5's vocabulary and the model's own tokens: every id of the tokenizer
    without them is unchanged."""
    from odvla.model.tokenizer import QWEN25_BASE_VOCAB, build_tokenizer, model_tokens, qwen25_tokenizer

    cfg = ModelConfig()
    cfg.llm.tokenizer, cfg.llm.vocab_size, cfg.text.prompt = "qwen2.5", 151936, "released"
    cfg.text.traj_encoding = "action"
    act = build_tokenizer(cfg)
    after = act.get_vocab()
    assert all(after[t] == i for t, i in qwen25_tokenizer().get_vocab().items())  # Qwen2.5's ids, all 151665
    own = [t for t in model_tokens(cfg.text) if not t.startswith("<act_")]  # the released tokens, placeholders
    assert [after[t] for t in own] == list(range(QWEN25_BASE_VOCAB + 22, QWEN25_BASE_VOCAB + 22 + len(own)))
    ids = [after[f"<act_{k}>"] for k in range(2048)]
    assert ids == list(range(QWEN25_BASE_VOCAB + 22 + len(own), QWEN25_BASE_VOCAB + 22 + len(own) + 2048))
    assert len(act) == ids[-1] + 1


def test_constrained_generation_writes_six_codebook_tokens(fitted, tmp_path):
    """An untrained tiny model under the real constrained path of ``generate``, its output embedding redrawn with
    a large scale for each seed (arbitrary logits over the whole vocabulary): every plan is exactly six action
    tokens between the markers."""
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.bench.bench_model import synthetic_batch

    torch.manual_seed(0)
    cfg = _action_cfg(fitted.save(tmp_path / "c.json"), fitted.size)
    cfg.vision.image_height, cfg.vision.image_width = 32, 56
    model = OpenDriveVLA(cfg)
    tok = model.tokenizer
    action_ids = {tok.convert_tokens_to_ids(f"<act_{k}>") for k in range(fitted.size)}
    start, end = tok.convert_tokens_to_ids("<traj_start>"), tok.convert_tokens_to_ids("<traj_end>")
    answers = []
    for seed in range(2):
        torch.manual_seed(seed)
        head = model.llm.get_output_embeddings()
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight))  # untied: random logits
        out = model.generate(synthetic_batch(cfg.vision, 2, seed=seed), max_new_tokens=12)
        assert all(out.parsed), out.errors
        for text in out.answers:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert ids[0] == start and ids[-1] == end and len(ids) == 8
            assert set(ids[1:-1]) <= action_ids
        answers.append(out.answers)
    assert answers[0] != answers[1]  # the logits really changed, the plans with them


# ------------------------------------------------------------------------------------ export, serve and eval paths
def test_export_carries_the_codebook_that_serve_loads_and_eval_checks(fitted, tmp_path):
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config
    from odvla.platform.data.codebook import check_model_against_shards, resolve_action_codebook
    from odvla.platform.export import load_export, save_export

    shards = tmp_path / "shards"
    fitted.save(shards / CODEBOOK_FILE)
    cfg = load_config(model="tiny", overrides=["model.text.traj_encoding=action",
                                               f"model.text.action_codebook_size={fitted.size}"])
    resolve_action_codebook(cfg.model, shards)  # what a training stage does: the file beside the shards
    assert cfg.model.text.action_codebook == str((shards / CODEBOOK_FILE).resolve())
    out = save_export(OpenDriveVLA(cfg.model), cfg, tmp_path / "export")
    (shards / CODEBOOK_FILE).unlink()  # the export never reads the training run's file again
    model, ecfg = load_export(out)  # Serve's loading path (serve/deployment.py)
    assert ecfg.model.text.action_codebook == str(out / "tokenizer" / CODEBOOK_FILE)
    assert model.codec.codebook.same_entries(fitted)
    fitted.save(shards / CODEBOOK_FILE)
    check_model_against_shards(ecfg.model, shards)  # the same codebook: fine
    ActionCodebook(fitted.entries * 1.01).save(shards / CODEBOOK_FILE)
    with pytest.raises(CodebookError, match=rf"{out / 'tokenizer' / CODEBOOK_FILE} .* differs .* "
                                            rf"{shards / CODEBOOK_FILE}"):
        check_model_against_shards(ecfg.model, shards)
    (out / "tokenizer" / CODEBOOK_FILE).write_text("not json")
    with pytest.raises(CodebookError, match=rf"{out / 'tokenizer' / CODEBOOK_FILE}: not a readable JSON"):
        load_export(out)


# ------------------------------------------------------------------------------------------------- sweep axis
def test_sweep_encoding_axis_sets_each_trials_encoding(tmp_path):
    from odvla.platform.config import ConfigError, load_config
    from odvla.tune.recipe import SweepRecipe
    from odvla.tune.space import build_hpo_space, build_param_space
    from odvla.tune.trial import TrialContext, _params_metrics, stage_configs

    assert "traj_encoding" not in build_param_space(load_config().sweep)  # no axis by default
    sw = load_config(overrides=["sweep.traj_encodings=[absolute, residual+compact, action, action]"]).sweep
    assert build_param_space(sw)["traj_encoding"]["grid_search"] == ["absolute", "residual+compact", "action"]
    assert build_hpo_space(sw)["traj_encoding"] == "absolute"
    with pytest.raises(ConfigError, match="sweep.traj_encodings: 'action\\+compact'"):
        build_param_space(load_config(overrides=["sweep.traj_encodings=[action+compact]"]).sweep)
    with pytest.raises(ConfigError, match="sweep.traj_encodings: 'digits'"):
        build_param_space(load_config(overrides=["sweep.traj_encodings=[digits]"]).sweep)
    user = ["train.max_steps=1", "data.shards=shards"]
    recipe = SweepRecipe(overrides=user).resolve(load_config(overrides=user), cwd=tmp_path)
    ctx = TrialContext(recipe=recipe, sweep_name="s", sweep_dir=str(tmp_path), tracking_uri="sqlite:////tmp/x.db",
                       experiment="e", parent_run_id=None)
    got = {}
    for enc in ("absolute", "residual+compact", "action"):
        confs = stage_configs(ctx, {"stages": "stage1+stage3", "model_size": "tiny", "traj_encoding": enc}, "t")
        got[enc] = [(c.model.text.traj_encoding, c.model.text.compact_tokens, c.model.text.action_codebook)
                    for c in confs]
        assert _params_metrics({"stages": "stage1+stage3", "model_size": "tiny"}, confs)["traj_encoding"] == enc
    book = str(tmp_path / "shards" / CODEBOOK_FILE)
    assert got == {"absolute": [("absolute", False, None)] * 2, "residual+compact": [("residual", True, None)] * 2,
                   "action": [("action", False, book)] * 2}


# --------------------------------------------------------------------------------------------------- the command
def _write_shards(root, n_train: int = 80, n_val: int = 20):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from odvla.platform.data.shard_schema import SCHEMA_VERSION
    from odvla.platform.data.shards import META_VERSION_KEY

    for split, n, seed in (("train", n_train, 11), ("val", n_val, 12)):
        f, p = bicycle(n, seed=seed)
        cols = {"future_traj": f.reshape(n, -1), "future_mask": np.ones((n, 6)), "past_traj": p.reshape(n, -1),
                "past_mask": np.ones((n, 4))}
        table = pa.table({k: pa.array(v.astype(np.float32).tolist(), pa.list_(pa.float32())) for k, v in cols.items()})
        table = table.replace_schema_metadata({META_VERSION_KEY: SCHEMA_VERSION})
        (root / split).mkdir(parents=True)
        pq.write_table(table, root / split / "part-00000.parquet")


def test_codebook_fit_command_writes_beside_the_shards_and_reports_the_val_round_trip(tmp_path, capsys):
    from odvla.platform.cli.main import main

    _write_shards(tmp_path / "shards")
    assert main(["codebook", "fit", "--shards", str(tmp_path / "shards"), "--size", "48", "--method", "kdisk"]) == 0
    out = capsys.readouterr().out
    cb = load_codebook(tmp_path / "shards" / CODEBOOK_FILE, expected_size=48)
    report = json.loads((tmp_path / "shards" / "action_codebook.report.json").read_text())
    f, _ = bicycle(20, seed=12)
    rt = cb.round_trip(f)  # the val split written above
    assert report["val_round_trip"]["mean_l2"] == pytest.approx(rt.mean_l2)
    assert f"val round trip: 20 trajectories: L2 mean {rt.mean_l2:.4f} m" in out and cb.method == "kdisk"
    assert main(["codebook", "fit", "--shards", str(tmp_path / "shards"), "--size", "5000"]) == 2
    assert "fewer than the codebook size 5000" in capsys.readouterr().err
