"""The instruction tasks: the one list of task names, and what each task is.

A task names what an example asks of the model. It is the ``task`` field of the batch (``model/batch.py``), of a
conversation record (``platform/data/conversations/schema.py``) and a key of ``stage.mixture``; the prompt builder
(``model/prompt.py``) turns ``planning`` into the planning prompt and every other task into the visual header and
its question. The evaluation scores the answers of the tasks with ``caption_qa`` against their references with the
caption metrics (BLEU-4, METEOR, CIDEr, ROUGE-L; ``platform/eval/qa_metrics.py``); ``planning`` is scored by the
planning metrics and ``interaction`` is not scored.

A new task is one entry in ``TASK_SPECS``. The order of ``TASK_SPECS`` is the order in which ``stage.mixture``
samples the tasks (``platform/data/conversations/mixture.py``), so it is part of what a seed reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One instruction task. ``caption_qa``: its answers are free text scored with the caption metrics."""

    name: str
    caption_qa: bool
    about: str = ""


TASK_SPECS = (
    Task("caption_scene", True, "a description of the whole scene"),
    Task("caption_agent", True, "a description of one agent: class, position, motion"),
    Task("caption_map", True, "a description of the map elements around the ego"),
    Task("qa", True, "a question about the scene and its answer"),
    Task("interaction", False, "an agent's future waypoints, plainly or given the ego plan, and whether it comes "
                               "close to that plan"),
    Task("planning", False, "the six future ego waypoints; the prompt is built from the ego state, command and "
                            "history"),
    Task("external", True, "examples imported from public instruction data sets"),
)
"""Every task, in mixture sampling order."""

TASKS = tuple(t.name for t in TASK_SPECS)
"""Task names of the batch contract (``model/batch.py``), of the conversation records and of ``stage.mixture``."""
QA_TASKS = tuple(t.name for t in TASK_SPECS if t.caption_qa)
"""The tasks the evaluation scores with the caption metrics."""
