"""Sweep building blocks without a cluster: trial configs, search spaces, searcher/scheduler, results table."""
from __future__ import annotations

import math

import pytest
import yaml

from odvla.platform.config import ConfigError, load_config
from odvla.tune.hpo import FinalMetricOptunaSearch, build_search, metric_mode
from odvla.tune.recipe import SweepRecipe
from odvla.tune.results import results_markdown, results_plot
from odvla.tune.space import build_hpo_space, build_param_space, max_concurrent_trials, stage_key
from odvla.tune.trial import TrialContext, stage_configs, train_loss_of


def _ctx(recipe: SweepRecipe) -> TrialContext:
    return TrialContext(recipe=recipe, sweep_name="s1", sweep_dir="/tmp/s1", tracking_uri="sqlite:////tmp/x.db",
                        experiment="exp", parent_run_id=None)


def test_trial_config_layers_presets_user_files_overrides_then_trial_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"train": {"max_steps": 7, "lr": 0.5}, "data": {"batch_size": 3}}))
    cfg = load_config(model="tiny", files=[user], overrides=["data.shards=shards", "train.max_steps=2"])
    recipe = SweepRecipe(files=[str(user)], overrides=["data.shards=shards", "train.max_steps=2"]).resolve(cfg)
    user.unlink()  # trials never read the file again: its contents travel with the recipe

    assert f"data.shards={tmp_path / 'shards'}" in recipe.path_overrides
    assert f"sweep.storage_path={tmp_path / 'runs/sweeps'}" in recipe.path_overrides
    c = recipe.trial_config("0.5b", "stage1", ["train.lr=3e-4"])
    assert c.model.preset == "0.5b" and c.model.llm.hidden_size == 896  # model preset, not just its name
    assert c.stage.name == "stage1" and c.stage.trainable == ["projectors"]  # stage preset
    assert c.data.batch_size == 3 and c.train.max_steps == 2  # user file, then user override wins over it
    assert c.train.lr == 3e-4  # the trial's own value last
    assert c.data.shards == str(tmp_path / "shards")
    assert {"train.max_steps", "train.lr", "data.batch_size", "data.shards"} <= recipe.user_keys()


def test_stage_configs_set_lr_run_names_and_workers_per_model_size(tmp_path):
    recipe = SweepRecipe(overrides=["train.max_steps=1"]).resolve(load_config(), cwd=tmp_path)
    confs = stage_configs(_ctx(recipe), {"stages": "stage1+stage3", "model_size": "3b", "lr": 2e-4}, "t_00001")
    assert [c.stage.name for c in confs] == ["stage1", "stage3"]
    assert all(c.train.lr == 2e-4 for c in confs)
    assert [c.train.run_name for c in confs] == ["s1-t_00001-stage1", "s1-t_00001-stage3"]
    assert confs[0].train.num_workers == 4 and confs[0].train.use_gpu  # 3b: ZeRO-2 over 4 GPUs
    assert confs[0].tracking.tracking_uri == "sqlite:////tmp/x.db" and confs[0].tracking.experiment == "exp"
    # No LR in the trial: the stage presets' own; the user's explicit worker count wins over the per-size default.
    recipe = SweepRecipe(overrides=["train.num_workers=2", "train.use_gpu=false"]).resolve(load_config())
    confs = stage_configs(_ctx(recipe), {"stages": "stage2+stage3", "model_size": "tiny"}, "t2")
    assert [c.train.lr for c in confs] == [5e-4, 1e-3] and confs[0].train.num_workers == 2


def test_ablation_grid_and_hpo_space_validate_stage_sets():
    cfg = load_config(overrides=["sweep.stage_sets=[[stage3],[stage1,stage3],[stage1,stage2,stage2_5,stage3]]",
                                 "sweep.model_sizes=[tiny,0.5b]", "sweep.lrs=[1e-3,1e-4]"])
    space = build_param_space(cfg.sweep)
    assert space["stages"]["grid_search"] == ["stage3", "stage1+stage3", "stage1+stage2+stage2_5+stage3"]
    assert space["model_size"]["grid_search"] == ["tiny", "0.5b"]
    # YAML 1.1 reads 1e-3 as the string '1e-3': the grid holds the floats, in the given order; without sweep.lrs
    # there is no lr axis (each stage keeps its preset's lr)
    assert cfg.sweep.lrs == ["1e-3", "1e-4"]
    assert space["lr"]["grid_search"] == [0.001, 0.0001] and {type(x) for x in space["lr"]["grid_search"]} == {float}
    assert "lr" not in build_param_space(load_config().sweep)
    hpo = build_hpo_space(load_config(overrides=["sweep.lr_min=1e-5", "sweep.lr_max=1e-3"]).sweep)
    assert hpo["stages"] == "stage3" and 1e-5 <= hpo["lr"].sample() <= 1e-3
    with pytest.raises(ConfigError, match="pipeline order"):
        stage_key(["stage3", "stage1"])
    with pytest.raises(ConfigError, match="stage4"):
        stage_key(["stage4"])
    with pytest.raises(ConfigError, match="sweep.model_sizes"):
        build_param_space(load_config(overrides=["sweep.model_sizes=[13b]"]).sweep)


def test_temporal_axis_turns_into_clip_len_and_eval_temporal_overrides(tmp_path):
    # the default adds no axis: existing sweeps keep their trials
    assert "temporal" not in build_param_space(load_config().sweep)
    sw = load_config(overrides=["sweep.temporal=[off, on]", "sweep.temporal_clip_len=2"]).sweep
    assert build_param_space(sw)["temporal"]["grid_search"] == ["off", "on"]  # YAML's on/off booleans read back
    assert build_hpo_space(sw)["temporal"] == "off"
    recipe = SweepRecipe(overrides=["train.max_steps=1", "data.clip_len=5", "sweep.temporal_clip_len=2"]).resolve(
        load_config(), cwd=tmp_path)
    on = stage_configs(_ctx(recipe), {"stages": "stage1+stage3", "model_size": "tiny", "temporal": "on"}, "t1")
    assert [(c.data.clip_len, c.eval.temporal) for c in on] == [(2, True), (2, True)]
    off = stage_configs(_ctx(recipe), {"stages": "stage3", "model_size": "tiny", "temporal": "off"}, "t2")
    assert [(c.data.clip_len, c.eval.temporal) for c in off] == [(1, False)]
    none = stage_configs(_ctx(recipe), {"stages": "stage3", "model_size": "tiny"}, "t3")
    assert [(c.data.clip_len, c.eval.temporal) for c in none] == [(5, False)]  # no axis: the user's settings
    with pytest.raises(ConfigError, match="sweep.temporal: 'sometimes'"):
        build_param_space(load_config(overrides=["sweep.temporal=[sometimes]"]).sweep)
    with pytest.raises(ConfigError, match="sweep.temporal_clip_len=1"):
        build_param_space(load_config(overrides=["sweep.temporal=[on]", "sweep.temporal_clip_len=1"]).sweep)


def test_hpo_search_is_optuna_tpe_on_eval_metric_with_asha_on_train_loss():
    cfg = load_config(overrides=["sweep.mode=hpo", "sweep.stage_sets=[[stage1,stage3]]"])
    search, sched, relaxed = build_search(cfg.sweep, num_stages=2)
    assert isinstance(search, FinalMetricOptunaSearch) and relaxed
    assert search.metric == "uniad/L2_avg" and search.mode == "min"
    assert sched.metric == "train_loss" and sched._max_t == 3  # two stage reports + the evaluation report
    s2, sched2, relaxed2 = build_search(load_config(overrides=["sweep.mode=hpo", "sweep.searcher=random",
                                                               "sweep.scheduler=none"]).sweep, 1)
    assert s2 is None and sched2 is None and not relaxed2
    assert build_search(load_config().sweep, 2) == (None, None, False)  # ablation: plain grid, FIFO
    with pytest.raises(ConfigError, match="sweep.searcher"):
        build_search(load_config(overrides=["sweep.mode=hpo", "sweep.searcher=bohb"]).sweep, 1)
    assert metric_mode("uniad/L2_avg") == "min" and metric_mode("qa/CIDEr") == "max"


def test_closed_loop_metric_modes_follow_the_aggregate_keys():
    """Every figure the closed-loop aggregate reports gets a direction: the scores up, the harms down."""
    from odvla.platform.sim.table import aggregate

    row = {"planner": "model", "distance_m": 50.0, "collisions": 1, "planner_errors": 0, "ticks": 4,
           "collision_events": [{"impact_speed": 3.0}], "ncap_score": 2.0,
           **{k: 0.5 for k in ("pdms", "pdms_nc", "pdms_dac", "pdms_ttc", "pdms_ep", "pdms_comfort",
                               "route_completion", "offroad_time_s")}}
    keys = set(aggregate([row])["model"])
    higher = {"pdms", "pdms_nc", "pdms_dac", "pdms_ttc", "pdms_ep", "pdms_comfort", "route_completion", "ncap_score"}
    lower = {"collisions", "collisions_per_km", "impact_speed", "offroad_time_s", "planner_errors"}
    assert higher | lower <= keys
    assert {k for k in higher if metric_mode(f"closed_loop/{k}") != "max"} == set()
    assert {k for k in lower if metric_mode(f"closed_loop/{k}") != "min"} == set()


def test_optuna_searcher_learns_only_from_final_reports():
    from ray import tune

    search = FinalMetricOptunaSearch(metric="uniad/L2_avg", mode="min")
    assert search.set_search_properties(None, None, {"lr": tune.loguniform(1e-5, 1e-2)})
    params = search.suggest("t1")
    assert 1e-5 <= params["lr"] <= 1e-2
    search.on_trial_result("t1", {"train_loss": 3.0, "training_iteration": 1})  # intermediate: no eval metric
    search.on_trial_result("t1", {"uniad/L2_avg": 1.5, "training_iteration": 2})
    search.on_trial_complete("t1", {"uniad/L2_avg": 1.5, "training_iteration": 2})
    trial = search._ot_study.trials[0]
    assert trial.value == 1.5 and trial.intermediate_values == {2: 1.5}


def test_max_concurrent_trials_auto_fits_the_largest_trial_in_the_cluster_gpus():
    cfg = load_config(overrides=["sweep.max_concurrent_trials=0", "sweep.model_sizes=[0.5b,3b]"])
    assert max_concurrent_trials(cfg.sweep, 16, {"0.5b": True, "3b": True}) == 4  # 3b takes 4 GPUs
    assert max_concurrent_trials(cfg.sweep, 2, {"0.5b": True, "3b": True}) == 1
    assert max_concurrent_trials(cfg.sweep, 0, {"0.5b": False, "3b": False}) == 1  # CPU: one at a time
    cfg.sweep.max_concurrent_trials = 3
    assert max_concurrent_trials(cfg.sweep, 16, {"0.5b": True, "3b": True}) == 3


def test_results_table_shows_both_conventions_failures_and_notes(tmp_path):
    rows = [
        {"trial_id": "a_00000", "stages": "stage3", "model_size": "tiny", "lr": 1e-3, "uniad/L2_1s": 0.5,
         "uniad/L2_avg": 1.25, "stp3/L2_avg": 0.75, "uniad/col_avg": 0.4, "train_loss": 2.5, "status": "done"},
        {"trial_id": "a_00001", "stages": "stage1+stage3", "model_size": "tiny", "lr": 1e-3, "train_loss": math.nan,
         "status": "failed"},
    ]
    md = results_markdown(rows, title="T", notes=["- trial a_00001 failed: boom"])
    lines = md.splitlines()
    assert lines[0] == "## T"
    header = lines[2]
    assert "UniAD L2 avg" in header and "ST-P3 L2 avg" in header and "UniAD col % avg" in header
    done = next(line for line in lines if "a_00000" in line)
    assert "| 1.25 |" in done and "| 0.75 |" in done and "| done |" in done
    failed = next(line for line in lines if line.startswith("| a_00001"))
    assert "| failed |" in failed and "nan" not in failed
    assert md.rstrip().endswith("- trial a_00001 failed: boom")
    png = results_plot(rows, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png2 = results_plot(rows, tmp_path / "q.png", by_lr=True)
    assert png2.stat().st_size > 0


def test_results_table_shows_the_temporal_setting_and_tracking_figures():
    common = {"stages": "stage3", "model_size": "tiny", "lr": 1e-3, "uniad/L2_avg": 1.5, "status": "done"}
    rows = [  # as the trials report them (tune/trial.py: 'temporal' is 'on' / 'off'); 'on' listed first
        {**common, "trial_id": "t_00001", "temporal": "on", "perception/IDS": 3.0, "perception/AMOTA": 0.512},
        {**common, "trial_id": "t_00000", "temporal": "off", "perception/IDS": 17.0, "perception/AMOTA": 0.125},
        {"trial_id": "t_00002", "stages": "stage3", "model_size": "tiny", "lr": 1e-3, "status": "failed"},
    ]
    lines = results_markdown(rows).splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:5] == ["trial", "stages", "size", "lr", "temporal"]
    assert "IDS" in header and "AMOTA" in header

    def cells(trial):
        line = next(x for x in lines if x.startswith(f"| {trial} "))
        return dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))

    on, off, failed = cells("t_00001"), cells("t_00000"), cells("t_00002")
    assert (on["temporal"], on["IDS"], on["AMOTA"]) == ("on", "3", "0.512")
    assert (off["temporal"], off["IDS"], off["AMOTA"]) == ("off", "17", "0.125")
    assert (failed["temporal"], failed["IDS"], failed["AMOTA"]) == ("-", "-", "-")
    body = [x for x in lines if x.startswith("| t_")]
    assert body.index(next(x for x in body if "t_00000" in x)) < body.index(next(x for x in body if "t_00001" in x))


def test_train_loss_is_read_from_the_stage_report():
    assert train_loss_of({"loss": 2.0, "global_step": 3}) == 2.0
    assert math.isnan(train_loss_of({"global_step": 3}))


def test_sweep_errors_name_the_setting_before_any_trial_runs(tmp_path, capsys):
    from odvla.platform.cli.main import main
    from odvla.tune.sweep import run_sweep

    with pytest.raises(ConfigError, match="sweep.mode"):
        run_sweep(load_config(overrides=["sweep.mode=grid"]), SweepRecipe())
    with pytest.raises(ConfigError, match="sweep.lrs"):
        run_sweep(load_config(overrides=["sweep.lrs=[1e-3,-1.0]"]), SweepRecipe())
    with pytest.raises(ConfigError, match="sweep.storage_path.*'s4'"):  # s3:// etc. are accepted (pyarrow)
        run_sweep(load_config(overrides=["sweep.storage_path=s4://bucket/sweeps"]), SweepRecipe())
    # `odvla sweep` (an entry-point command): a resume without a name, or of a sweep that is not there.
    assert main(["sweep", "--restore", "--set", f"sweep.storage_path={tmp_path}"]) == 2
    assert "sweep.name" in capsys.readouterr().err
    assert main(["sweep", "--restore", "--set", f"sweep.storage_path={tmp_path}", "--set", "sweep.name=nope"]) == 2
    assert f"no sweep to resume at {tmp_path / 'nope'}" in capsys.readouterr().err


def test_root_cause_picks_the_users_error_out_of_rays_wrappers():
    from odvla.tune.sweep import root_cause

    err = RuntimeError("ray.exceptions.RayTaskError(UserCodeException): ray::MapWorker.submit()\n"
                       "  File \"x.py\", line 3, in f\n"
                       "ValueError: max_new_tokens=64 cannot hold a trajectory\n"
                       "The above exception was the direct cause of the following exception:\n"
                       "ray.exceptions.UserCodeException: UDF failed to process a data block.\n")
    assert root_cause(err) == "ValueError: max_new_tokens=64 cannot hold a trajectory"
    assert root_cause(RuntimeError("plain message")) == "plain message"
