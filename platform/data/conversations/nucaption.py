"""nuCaption reader (LiDAR-LLM's Nu-Caption, ``nuCaptionLidarView_<split>.json``): a list of
``{"sample_token", "view", "question", "answer"}``, ``view`` a camera name whose sector the caption describes.
One single-turn 'external' record each; the view is kept in ``meta`` and named in the question when the question
does not say it."""
from __future__ import annotations

from pathlib import Path

from .json_input import load_json, require
from .schema import ConversationFormatError, make_record

SOURCE = "nucaption"
VIEW_WORDS = {"CAM_FRONT": "front", "CAM_FRONT_LEFT": "front left", "CAM_FRONT_RIGHT": "front right",
              "CAM_BACK": "back", "CAM_BACK_LEFT": "back left", "CAM_BACK_RIGHT": "back right"}


def read_nucaption(path: Path) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, list):
        raise ConversationFormatError(path, "(top level)", "expected a list of caption records")
    out = []
    for i, rec in enumerate(data):
        require(rec, {"sample_token": str, "question": str, "answer": str}, path, i)
        view = rec.get("view")
        if view is not None and view not in VIEW_WORDS:
            raise ConversationFormatError(path, i, f"unknown view {view!r}; expected one of {sorted(VIEW_WORDS)}")
        question = rec["question"].strip()
        if view and "view" not in question.lower():
            question = f"In the {VIEW_WORDS[view]} view: {question}"
        out.append(make_record(rec["sample_token"], "external", SOURCE, f"{Path(path).name}#{i}",
                               [("human", question), ("gpt", rec["answer"])], meta={"view": view}))
    return out
