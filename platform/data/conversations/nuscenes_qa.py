"""nuScenes-QA reader: ``{"questions": [{"sample_token", "question", "answer", "template_type", "num_hop", ...}]}``
(one file per split, e.g. ``NuScenes_train_questions.json``). One single-turn 'external' record per question."""
from __future__ import annotations

from pathlib import Path

from .json_input import load_json, require
from .schema import ConversationFormatError, make_record

SOURCE = "nuscenes_qa"


def read_nuscenes_qa(path: Path) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ConversationFormatError(path, "(top level)", 'expected an object with a "questions" list')
    out = []
    for i, q in enumerate(data["questions"]):
        require(q, {"sample_token": str, "question": str, "answer": (str, int, float, bool)}, path, i)
        answer = q["answer"]
        answer = ("yes" if answer else "no") if isinstance(answer, bool) else str(answer)
        meta = {k: q[k] for k in ("template_type", "num_hop") if k in q}
        out.append(make_record(q["sample_token"], "external", SOURCE, f"{Path(path).name}#{i}",
                               [("human", q["question"]), ("gpt", answer)], meta=meta))
    return out
