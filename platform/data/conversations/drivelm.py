"""DriveLM reader: ``{scene_token: {"scene_description", "key_frames": {sample_token: {"key_object_infos",
"QA": {"perception"|"prediction"|"planning"|"behavior": [{"Q", "A", ...}]}}}}}``. One single-turn 'external'
record per QA item, its category in ``meta``. Object references such as ``<c1,CAM_FRONT,1088.3,497.5>`` are
kept verbatim."""
from __future__ import annotations

from pathlib import Path

from .json_input import load_json, require
from .schema import ConversationFormatError, make_record

SOURCE = "drivelm"
CATEGORIES = ("perception", "prediction", "planning", "behavior")


def read_drivelm(path: Path) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConversationFormatError(path, "(top level)", "expected an object keyed by scene token")
    out = []
    for scene_token, scene in data.items():
        require(scene, {"key_frames": dict}, path, f"scene {scene_token}")
        for sample_token, frame in scene["key_frames"].items():
            where = f"scene {scene_token} key frame {sample_token}"
            require(frame, {"QA": dict}, path, where)
            for cat, items in frame["QA"].items():
                if cat not in CATEGORIES:
                    raise ConversationFormatError(path, where, f"unknown QA category {cat!r}; expected {CATEGORIES}")
                if not isinstance(items, list):
                    raise ConversationFormatError(path, f"{where} {cat}", "expected a list of QA items")
                for i, qa in enumerate(items):
                    require(qa, {"Q": str, "A": str}, path, f"{where} {cat}[{i}]")
                    out.append(make_record(sample_token, "external", SOURCE, f"{sample_token}/{cat}/{i}",
                                           [("human", qa["Q"]), ("gpt", qa["A"])],
                                           meta={"category": cat, "scene_token": scene_token}))
    return out
