"""QA metrics with the COCO caption scorers on small hand-built reference/candidate sets (needs Java).

One scoring pass covers every case (each pass starts the PTB tokenizer and METEOR JVMs)."""
from __future__ import annotations

import numpy as np
import pytest

from odvla.platform.eval.qa_metrics import compute_qa_metrics, score_qa

REFS = [
    "there is a red car parked on the left side of the road",
    "a pedestrian is crossing the street in front of the ego vehicle",
    "the traffic light ahead is green so the ego car keeps forward",
    "two trucks are waiting at the intersection",
]
PARTIAL = ["a red car is parked on the road", "a pedestrian crosses the street", "the light is green",
           "trucks wait at the intersection"]
UNRELATED = ["banana bread recipe with walnuts", "quantum field theory lecture", "my cat sleeps all afternoon",
             "stock prices fell sharply"]


def test_identical_high_unrelated_low_partial_between():
    refs = REFS * 3 + [["a car is parked", "there is a parked car"]]
    cands = REFS + PARTIAL + UNRELATED + ["there is a parked car"]
    corpus, per = score_qa(refs, cands)
    assert corpus["qa/n"] == 13 and set(corpus) == {"qa/n", "qa/BLEU_4", "qa/METEOR", "qa/ROUGE_L", "qa/CIDEr"}
    for k in ("BLEU_4", "METEOR", "ROUGE_L", "CIDEr"):
        same, part, other = per[k][:4].mean(), per[k][4:8].mean(), per[k][8:12].mean()
        assert same > part > other, k
    assert per["BLEU_4"][:4].min() > 99 and per["METEOR"][:4].min() > 99 and per["ROUGE_L"][:4].min() > 99
    assert per["BLEU_4"][8:12].max() < 1 and per["ROUGE_L"][8:12].max() < 1 and per["CIDEr"][8:12].max() < 1
    assert per["ROUGE_L"][12] > 99  # a candidate equal to one of several references
    assert 0 < corpus["qa/BLEU_4"] < 100 and np.isfinite(corpus["qa/CIDEr"])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 references but 1"):
        compute_qa_metrics(REFS[:2], REFS[:1])
    with pytest.raises(ValueError, match="tok7"):
        compute_qa_metrics(["  "], ["x"], ids=["tok7"])
    assert compute_qa_metrics([], []) == {"qa/n": 0.0}
