"""Loading public JSON / JSONL instruction files with errors that name the file (and line for JSONL)."""
from __future__ import annotations

import json
from pathlib import Path

from .schema import ConversationFormatError


def load_json(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instruction file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversationFormatError(path, f"at line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ConversationFormatError(path, f"at byte {e.start}", "not UTF-8 text") from e


def load_jsonl(path: Path) -> list:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instruction file not found: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConversationFormatError(path, f"{len(out)} (line {lineno})", f"invalid JSON: {e.msg}") from e
    return out


def require(rec, fields: dict, path, where) -> None:
    """``rec`` must be a dict holding ``fields`` (name -> type or tuple of types)."""
    if not isinstance(rec, dict):
        raise ConversationFormatError(path, where, f"expected an object, got {type(rec).__name__}")
    for name, typ in fields.items():
        if name not in rec:
            raise ConversationFormatError(path, where, f"missing field {name!r}")
        types = typ if isinstance(typ, tuple) else (typ,)
        value = rec[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # bool is an int
            want = "/".join(t.__name__ for t in types)
            raise ConversationFormatError(path, where, f"field {name!r} is {type(value).__name__}, expected {want}")
