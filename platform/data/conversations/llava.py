"""LLaVA-style conversation reader (the reference code's own format): a JSON list or JSONL of
``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``. The sample token is ``sample_token`` /
``sample_id`` when present, else the part of ``id`` before the first '_' (as the reference does). A record whose
turns are all empty is the reference's planning placeholder and becomes task 'planning'; others are 'external'.
``<image>`` tags are kept here and stripped when examples are built."""
from __future__ import annotations

from pathlib import Path

from .json_input import load_json, load_jsonl, require
from .schema import ConversationFormatError, check_turns, make_record

SOURCE = "llava"
ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def read_llava(path: Path) -> list[dict]:
    path = Path(path)
    data = load_jsonl(path) if path.suffix == ".jsonl" else load_json(path)
    if not isinstance(data, list):
        raise ConversationFormatError(path, "(top level)", "expected a list of conversation records")
    out = []
    for i, rec in enumerate(data):
        require(rec, {"conversations": list}, path, i)
        rid = rec.get("id", rec.get("qa_id"))
        token = rec.get("sample_token") or rec.get("sample_id") or (rid.split("_")[0] if isinstance(rid, str) else None)
        if not isinstance(token, str) or not token:
            raise ConversationFormatError(path, i, 'no sample token: give "sample_token", "sample_id" or an "id" '
                                                   'starting with the token')
        turns = []
        for j, t in enumerate(rec["conversations"]):
            require(t, {"from": str, "value": str}, path, f"{i} turn {j}")
            if t["from"] not in ROLE_ALIASES:
                raise ConversationFormatError(path, f"{i} turn {j}", f"unknown speaker {t['from']!r}; expected "
                                                                     "human/gpt")
            turns.append((ROLE_ALIASES[t["from"]], t["value"]))
        check_turns(turns, path, i)
        task = "planning" if all(not v.strip() for _, v in turns) else "external"
        out.append(make_record(token, task, SOURCE, str(rid if rid is not None else f"{path.name}#{i}"), turns))
    return out
