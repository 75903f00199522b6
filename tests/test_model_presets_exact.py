"""The real presets are exactly Qwen2.5-0.5B/3B/7B-Instruct, read the released OpenDriveVLA prompt, and say when
they start from random weights."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from odvla.model.llm import QWEN25_OFFICIAL, build_llm
from odvla.model.tokenizer import build_tokenizer
from odvla.platform.config import load_config

# DriveVLA/OpenDriveVLA llava/conversation.py, conv_qwen_planning_oriented_vlm.system, after "<|im_start|>system\n"
RELEASED_SYSTEM = (
    "You are Open-DriveVLA, an advanced vision-language driving model. Your core responsibilities include safe "
    "trajectory planning and interpretable decision-making. You generate collision-free driving plans while "
    "providing clear, logical explanations for user queries.\n\nContext:\n - Coordinates: X-axis is pointing to the "
    "right, and Y-axis is pointing to the front. You're at point (0,0). All coordinates are in meters.\n - "
    "Objective: Generate a 3-second safe driving plan consisting of 6 waypoints, one every 0.5 seconds. Provide "
    "logical responses to user queries.\n\nTask:\n- Perception & Prediction: Analyze the driving environment using "
    "visual data. Identify road users and hazards and predict their motion.\n- Thought Process: Determine critical "
    "objects and assess potential hazards. Consider road constraints and traffic rules.\n- Trajectory Planning: "
    "Define the driving objective. Generate a safe, feasible 3-second route consisting of 6 waypoints.\n- "
    "Explainability & User Interaction: If the user asks a question, provide a clear and logical response.\n\n"
    "Output Format:\n1. Trajectory (MOST IMPORTANT):\n  - Format: <traj_start>[(x1,y1),(x2,y2),(x3,y3),(x4,y4),"
    "(x5,y5),(x6,y6)]<traj_end>\n2. User Question Response (OPTIONAL):\n  - Format: <answer_start> Answer to the "
    "user's question <answer_end>")


@pytest.mark.parametrize("preset", ["0.5b", "3b", "7b"])
def test_preset_is_exactly_qwen25_instruct(preset):
    cfg = load_config(model=preset).model
    assert (cfg.llm.tokenizer, cfg.text.prompt) == ("qwen2.5", "released")
    tok = build_tokenizer(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.device("meta"):
            llm = build_llm(cfg, tok)
    official = dict(QWEN25_OFFICIAL[preset])
    params = official.pop("params")
    got = llm.config.to_dict()
    got.setdefault("rope_theta", (got.get("rope_parameters") or {}).get("rope_theta"))  # transformers 5 nests it
    assert {k: got[k] for k in official} == official
    # the model's added tokens (151665..) fit the released embedding rows: nothing is added to the count
    assert llm.get_input_embeddings().num_embeddings == official["vocab_size"] > len(tok) - 1
    assert sum(p.numel() for p in llm.parameters()) == params
    random_notes = [w for w in caught if "RANDOM weights" in str(w.message)]
    assert len(random_notes) <= 1  # once per process and preset
    if random_notes:
        assert f"Qwen2.5-{preset.upper()}-Instruct" in str(random_notes[0].message)


def test_random_weights_are_announced_once():
    from odvla.model import llm as llm_mod

    cfg = load_config(model="0.5b").model
    tok = build_tokenizer(cfg)
    llm_mod._RANDOM_INIT_WARNED.discard("0.5b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with torch.device("meta"):
                build_llm(cfg, tok)
    notes = [str(w.message) for w in caught if "RANDOM weights" in str(w.message)]
    assert len(notes) == 1 and "model.llm.path" in notes[0]


def test_config_params_prints_the_parts(capsys):
    from odvla.platform.cli.main import main

    assert main(["config", "--model", "0.5b", "--params"]) == 0
    out = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()[1:]}
    assert counts["llm"] == QWEN25_OFFICIAL["0.5b"]["params"]
    assert counts["vision"] > 10_000_000 and counts["projectors"] > 0
    assert counts["total"] == counts["vision"] + counts["projectors"] + counts["llm"]


def _row(past_mask=(1, 1, 1, 1)):
    past = np.array([[-7.6, 0.02], [-5.6, 0.01], [-3.7, 0.0], [-1.8, 0.0]])
    return {
        "task": ["planning"], "question": [""], "answer": [""], "sample_token": ["fixture"],
        "ego_state": torch.zeros(1, 7), "command": torch.tensor([2]),
        "vad_ego": torch.tensor([[1.0, 3.74, 0.19, -0.02, -0.012, 3.76, -0.05]], dtype=torch.float64),
        "past_traj": torch.tensor(past)[None], "past_mask": torch.tensor([past_mask], dtype=torch.float64),
        "future_traj": torch.tensor([[1.9 * (i + 1), 0.0] for i in range(6)], dtype=torch.float64)[None],
        "future_mask": torch.ones(1, 6),
    }


def test_released_prompt_golden():
    """Expected text written from build_llava_conversation.py / conversation.py (CHATML get_prompt) by hand."""
    from odvla.model.config import ModelConfig
    from odvla.model.text_inputs import ChatEncoder

    cfg = ModelConfig()
    cfg.llm.tokenizer, cfg.text.prompt = "qwen2.5", "released"
    cfg.vision.num_scene_queries = cfg.vision.num_agent_tokens = cfg.vision.num_map_queries = 1
    enc = ChatEncoder(build_tokenizer(cfg), cfg)
    user = ("Scene information: <scene_start><SCENE><scene_end>\n"
            "Object-wise tracking information: <track_start><TRACK><track_end>\n"
            "Map information: <map_start><MAP><map_end>\n"
            "Ego states: - Velocity (vx,vy): (0.50,1.87) - Heading Angular Velocity (v_yaw): (-0.01) - "
            "Acceleration (ax,ay): (0.00,-0.10) - Can Bus: (0.19,-0.02) - Heading Speed: (1.88) - Steering: (-0.05)\n"
            "Historical trajectory (last 2 seconds): [(-0.02,-7.60),(-0.01,-5.60),(0.00,-3.70),(0.00,-1.80)]\n"
            "Mission goal: keep forward\n"
            "Planning trajectory: <trajectory>")
    assert enc.prompt_text(_row(), 0) == (f"<|im_start|>system\n{RELEASED_SYSTEM}<|im_end|>\n"
                                          f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    assert enc.answer_text(_row(), 0) == ("<traj_start>[(0.00,1.90),(0.00,3.80),(0.00,5.70),(0.00,7.60),"
                                          "(0.00,9.50),(0.00,11.40)]<traj_end>")
    # scene start: the two missing points are extrapolated backwards with the earliest known step (VAD)
    turn = enc.user_turn(_row(past_mask=(0, 0, 1, 1)), 0)
    assert "(last 2 seconds): [(0.00,-7.50),(0.00,-5.60),(0.00,-3.70),(0.00,-1.80)]\n" in turn
    # the reference layout stays available and unchanged for tiny
    tiny = load_config(model="tiny").model
    assert tiny.text.prompt == "reference"
    assert "Ego states:" in ChatEncoder(build_tokenizer(tiny), tiny).user_turn(_row(), 0).splitlines()[3]
