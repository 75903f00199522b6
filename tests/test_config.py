"""Config tree: presets, YAML files, --set overrides, and errors that name the key."""
from __future__ import annotations

import pytest

from odvla.platform.config import ConfigError, dump_yaml, flatten, from_dict, load_config, to_dict
from odvla.platform.config import stage_names
from odvla.platform.config.schema import MODEL_PRESETS


def test_presets_load_with_real_qwen_dimensions():
    cfg = load_config(model="0.5b", stage="stage3")
    assert (cfg.model.llm.hidden_size, cfg.model.llm.num_hidden_layers, cfg.model.llm.vocab_size) == (896, 24, 151936)
    assert cfg.model.vision.backbone == "resnet101"
    assert load_config(model="7b").model.llm.tie_word_embeddings is False
    for m in MODEL_PRESETS:
        for s in stage_names():
            c = load_config(model=m, stage=s)
            assert c.stage.name == s and c.model.preset == m


def test_overrides_files_and_order(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("train: {lr: 0.5, epochs: 3}\nstage: {mixture: {qa: 2.0}}\n")
    cfg = load_config(model="tiny", stage="stage2", files=[f], overrides=["train.lr=2e-5", "data.batch_size=4",
                                                                          "model.vision.bev_x_range=[-10, 10]"])
    assert cfg.train.lr == pytest.approx(2e-5)  # the override beats the file
    assert cfg.train.epochs == 3 and cfg.data.batch_size == 4
    assert cfg.stage.mixture == {"qa": 2.0}
    assert cfg.model.vision.bev_x_range == (-10, 10)


def test_round_trip_through_yaml_dict():
    cfg = load_config(model="3b", stage="stage2_5", overrides=["train.num_workers=4"])
    again = from_dict(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)
    assert "train.num_workers" in flatten(to_dict(cfg))
    assert "hidden_size: 2048" in dump_yaml(cfg)


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "train.lrr"),
    ("train.lr=fast", "train.lr"),
    ("train.bf16=3", "train.bf16"),
    ("model.vision.backbone=1.5", "model.vision.backbone"),
    ("model.vision.backbone_depth=101", "model.vision.backbone_depth"),
    ("nonsense", "a.b=value"),
])
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(model="tiny", overrides=[override])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        load_config(model="huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(files=[tmp_path / "nope.yaml"])


def test_override_into_a_mapping_sets_one_entry_and_naming_the_field_replaces_it():
    """``--set stage.loss_weights.det=2`` changes one loss weight and keeps the others (replacing the mapping would
    silently drop the planner's ``lm`` loss); ``--set stage.mixture={...}`` replaces the whole mixture."""
    from odvla.platform.config import ConfigError, load_config

    preset = load_config(stage="stage3").stage.loss_weights
    cfg = load_config(stage="stage3", overrides=["stage.loss_weights.det=2.0"])
    assert cfg.stage.loss_weights == {**preset, "det": 2.0} and preset["lm"] == 1.0
    assert load_config(stage="stage3", overrides=["stage.mixture={qa: 1.0}"]).stage.mixture == {"qa": 1.0}
    assert load_config(stage="stage2", overrides=["stage.mixture.qa=0.25"]).stage.mixture == \
        {**load_config(stage="stage2").stage.mixture, "qa": 0.25}
    with pytest.raises(ConfigError, match="stage.loss_weights.det is 0.5, not a mapping"):
        load_config(stage="stage3", overrides=["stage.loss_weights.det.x=1"])
