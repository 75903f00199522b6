"""TOD3Cap reader: ``{annotation_token: {"final_caption", "attribute_caption", "depth_caption",
"localization_caption", "motion_caption", "map_caption"}}`` -- object-level captions of nuScenes boxes.

Each annotation token is tied to its keyframe and agent through the dataroot's ``sample_annotation`` table
(``annotation_index``), and the agent is named in the question by its position in the keyframe's ego frame
(``locate``, from the shard row). A record becomes one multi-turn 'caption_agent'-style 'external' conversation:
the final caption first, then one self-contained question per caption field that is present.
Annotation tokens the dataroot does not know keep sample token '' so the join step counts them as unmatched.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from .json_input import load_json
from .schema import ConversationFormatError, make_record
from .text_numbers import fmt_point

SOURCE = "tod3cap"
FIELDS = ("final_caption", "attribute_caption", "depth_caption", "localization_caption", "motion_caption",
          "map_caption")
QUESTIONS = {
    "final_caption": "Describe the object {ref}.",
    "attribute_caption": "What does the object {ref} look like?",
    "depth_caption": "How far is the object {ref} from the ego vehicle?",
    "localization_caption": "Where is the object {ref} relative to the ego vehicle?",
    "motion_caption": "How is the object {ref} moving?",
    "map_caption": "Where is the object {ref} on the road?",
}

Locate = Callable[[str, str], Optional[np.ndarray]]


def annotation_index(dataroot: Path, version: str) -> dict[str, tuple[str, str]]:
    """annotation token -> (sample token, instance token), from ``<dataroot>/<version>/sample_annotation.json``."""
    path = Path(dataroot) / version / "sample_annotation.json"
    if not path.is_file():
        raise FileNotFoundError(f"TOD3Cap needs the nuScenes annotation table to tie captions to samples: {path}")
    with open(path) as f:
        rows = json.load(f)
    return {r["token"]: (r["sample_token"], r["instance_token"]) for r in rows}


def read_tod3cap(path: Path, annotations: Mapping[str, tuple[str, str]], locate: Locate | None = None
                 ) -> list[dict]:
    """``annotations``: annotation token -> (sample token, instance token); ``locate(sample, instance)`` gives the
    agent's [2] ego-frame centre, or None (the question then says 'the annotated object', meta located=False)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConversationFormatError(path, "(top level)", "expected an object keyed by annotation token")
    out = []
    for i, (ann, caps) in enumerate(data.items()):
        where = f"{i} ({ann})"
        if not isinstance(caps, dict):
            raise ConversationFormatError(path, where, f"expected an object of captions, got {type(caps).__name__}")
        if not isinstance(caps.get("final_caption"), str):
            raise ConversationFormatError(path, where, "missing text field 'final_caption'")
        for k in FIELDS:
            if k in caps and caps[k] is not None and not isinstance(caps[k], str):
                raise ConversationFormatError(path, where, f"field {k!r} is {type(caps[k]).__name__}, expected text")
        sample_token, instance = annotations.get(ann, ("", None))
        xy = locate(sample_token, instance) if (locate and sample_token) else None
        ref = f"at {fmt_point(xy)}" if xy is not None else "that is annotated"
        turns = []
        for k in FIELDS:
            if isinstance(caps.get(k), str) and caps[k].strip():
                turns += [("human", QUESTIONS[k].format(ref=ref)), ("gpt", caps[k].strip())]
        out.append(make_record(sample_token, "external", SOURCE, ann, turns, instance_token=instance,
                               meta={"annotation_token": ann, "located": xy is not None}))
    return out
