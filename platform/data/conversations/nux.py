"""nuX reader: ``{sample_token: {"narration": str, "reasoning": str}}``. Each entry gives two self-contained
single-turn 'external' examples: narrate the ego behaviour, and explain its reason."""
from __future__ import annotations

from pathlib import Path

from .json_input import load_json, require
from .schema import ConversationFormatError, make_record

SOURCE = "nux"
NARRATION_Q = "Describe what the ego vehicle is doing."
REASONING_Q = "Explain why the ego vehicle drives the way it does."


def read_nux(path: Path) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConversationFormatError(path, "(top level)", "expected an object keyed by sample token")
    out = []
    for i, (token, rec) in enumerate(data.items()):
        require(rec, {"narration": str, "reasoning": str}, path, f"{i} ({token})")
        out.append(make_record(token, "external", SOURCE, f"{token}/narration",
                               [("human", NARRATION_Q), ("gpt", rec["narration"])]))
        out.append(make_record(token, "external", SOURCE, f"{token}/reasoning",
                               [("human", REASONING_Q), ("gpt", rec["reasoning"])]))
    return out
