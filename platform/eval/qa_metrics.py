"""Driving-QA text metrics with the standard COCO caption scorers (pycocoevalcap).

BLEU-4 (``Bleu(4)``, the 4-gram score), METEOR 1.5 (``Meteor``, runs the bundled Java jar), CIDEr (``Cider``,
CIDEr-D weights of the reference implementation, document frequencies from the given references) and ROUGE-L
(``Rouge``), after the Stanford PTB tokenizer (``PTBTokenizer``, Java too) as in the coco-caption evaluation the
OpenDriveVLA / nuCaption / nuX tables follow. Scores are reported on a 0-100 scale like those tables
(``qa/BLEU_4``, ``qa/METEOR``, ``qa/CIDEr``, ``qa/ROUGE_L``; CIDEr x 100 as the tables print it) plus
``qa/n`` (number of scored pairs).
"""
from __future__ import annotations

import shutil
from typing import Sequence

import numpy as np


def compute_qa_metrics(references: Sequence[str | Sequence[str]], candidates: Sequence[str],
                       ids: Sequence[str] | None = None) -> dict:
    """Score candidate answers against references (one string or several per example).

    references[i] and candidates[i] belong to example i (``ids`` names them in errors). Raises ValueError on a
    length mismatch or an empty reference, RuntimeError when Java (needed by the tokenizer and METEOR) is missing.
    Returns the corpus scores {'qa/BLEU_4', 'qa/METEOR', 'qa/CIDEr', 'qa/ROUGE_L', 'qa/n'}.
    """
    return score_qa(references, candidates, ids)[0]


def score_qa(references: Sequence[str | Sequence[str]], candidates: Sequence[str],
             ids: Sequence[str] | None = None) -> tuple[dict, dict]:
    """-> (corpus scores as ``compute_qa_metrics``, per-example scores {'BLEU_4': [N], ...} on the same 0-100 scale).

    One pass of each scorer (one tokenizer and one METEOR JVM start) whatever N is.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(references) != len(candidates):
        raise ValueError(f"QA metrics: {len(references)} references but {len(candidates)} candidates")
    if not candidates:
        return {"qa/n": 0.0}, {}
    if shutil.which("java") is None:
        raise RuntimeError("QA metrics need Java (PTBTokenizer and METEOR run java); install a JRE, e.g. "
                           "`apt-get install default-jre-headless`")
    ids = [str(i) for i in (ids if ids is not None else range(len(candidates)))]
    gts, res = {}, {}
    for k, ref, cand in zip(ids, references, candidates):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not any(r.strip() for r in refs):
            raise ValueError(f"QA metrics: example {k} has an empty reference answer")
        gts[k] = [{"caption": r} for r in refs]
        res[k] = [{"caption": cand if cand.strip() else "<empty>"}]
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    # the tokenizer may strip a candidate to nothing (only punctuation); Bleu asserts one non-empty hypothesis
    res = {k: [v[0] if v and v[0].strip() else "empty"] for k, v in res.items()}
    out = {"qa/n": float(len(ids))}
    per: dict = {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    out["qa/BLEU_4"], per["BLEU_4"] = 100.0 * float(bleu[3]), 100.0 * np.asarray(bleu_each[3], float)
    meteor = Meteor()
    try:
        m, m_each = meteor.compute_score(gts, res)
    finally:
        _close_meteor(meteor)
    out["qa/METEOR"], per["METEOR"] = 100.0 * float(m), 100.0 * np.asarray(m_each, float)
    r, r_each = Rouge().compute_score(gts, res)
    out["qa/ROUGE_L"], per["ROUGE_L"] = 100.0 * float(r), 100.0 * np.asarray(r_each, float)
    c, c_each = Cider().compute_score(gts, res)
    out["qa/CIDEr"], per["CIDEr"] = 100.0 * float(c), 100.0 * np.asarray(c_each, float)
    return out, per


def _close_meteor(meteor) -> None:
    """Stop the METEOR java subprocess now instead of at interpreter exit."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    try:
        with meteor.lock:
            proc.stdin.close()
            proc.kill()
            proc.wait()
    except Exception:  # noqa: BLE001 - already gone
        pass
