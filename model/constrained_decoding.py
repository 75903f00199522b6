"""Constrained decoding: a ``transformers`` LogitsProcessor that keeps generated trajectories inside the codec's grammar.

:class:`TrajectoryGrammar` is a state machine over *token ids* built from the codec's character grammar
(``[(x,y),...]`` with numbers ``-?(0|[1-9]d{0,2}).d{decimals}``) or, with compact tokens, over the number tokens.
A vocabulary token is allowed in a state when feeding all its characters keeps the text a prefix of a valid
trajectory; the table is computed lazily per state and cached. Each state also knows the fewest tokens that finish
the trajectory (every grammar character exists as a single byte-level token), so the processor only allows tokens
after which the trajectory can still end within ``max_new_tokens``: every generated trajectory parses.
With the ``action`` encoding the machine is a counter: exactly six codebook tokens between the markers, every step
allowing one and the same id set (a single cached tensor, so a step's mask is one scatter).

:class:`TrajectoryLogitsProcessor` runs one machine per batch row: 'planning' rows must start with ``<traj_start>``
and end with ``<|im_end|>`` right after ``<traj_end>``; other rows generate freely until they emit ``<traj_start>``,
are constrained until ``<traj_end>``, then are free again.

``number_choice='median'`` (compact tokens only): at each number token the processor keeps only the token at the
*median* of the model's distribution over that slot, the slot's tokens taken in order of value (``<-99>`` ..
``<-0>``, ``<+0>`` .. ``<+99>`` for the integer part, ``<.00>`` .. ``<.99>`` for the fraction), instead of
leaving the choice to the arg-max. A number's distribution is often a spike at one value (``<+0><.00>`` when the
ego keeps its speed) beside mass spread over many neighbouring values; the arg-max picks the spike even when most
of the mass lies elsewhere, the median picks the value that minimises the expected absolute error of the slot
(minimum-Bayes-risk decoding for an L1 loss). Generation stays greedy over the processed scores.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from transformers import LogitsProcessor

from odvla.model.traj_codec import (MAX_INT_DIGITS, TRAJ_END, TRAJ_START, TrajectoryCodec, action_tokens,
                                    compact_number_tokens)

NUMBER_CHOICES = ("argmax", "median")
PRE = ("pre",)  # before <traj_start>
DONE = ("done",)  # after <traj_end>
_DIGITS = "0123456789"


def check_number_choice(number_choice: str, compact: bool) -> None:
    """Raise ValueError unless ``number_choice`` is one of NUMBER_CHOICES and usable (median needs compact tokens)."""
    if number_choice not in NUMBER_CHOICES:
        raise ValueError(f"number_choice must be one of {NUMBER_CHOICES}, got {number_choice!r}")
    if number_choice == "median" and not compact:
        raise ValueError("number_choice='median' needs text.compact_tokens (one token per integer part and per "
                         "fraction, so each slot's tokens can be put in order of value)")


class TrajectoryGrammar:
    """Token-level automaton of ``codec``'s trajectory text for ``tokenizer``. States are hashable tuples."""

    def __init__(self, tokenizer, codec: TrajectoryCodec):
        self.codec = codec
        self.d = codec.decimals
        self.n = codec.num_points
        self.start_id = self._tid(tokenizer, TRAJ_START)
        self.end_id = self._tid(tokenizer, TRAJ_END)
        self._cache: dict[tuple, dict[int, tuple]] = {}
        self._min_cache: dict[tuple, int] = {}
        self._arrays: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.action = codec.action
        if self.action:
            self.action_ids = [self._tid(tokenizer, t) for t in action_tokens(codec.codebook_size)]
            self._action_ids = torch.tensor(self.action_ids, dtype=torch.long)
            self.length = self.n
            return
        if codec.compact:
            toks = compact_number_tokens(self.d)
            ints = [t for t in toks if t[1] in "+-"]
            self.int_ids = [self._tid(tokenizer, t) for t in ints]
            self.frac_ids = [self._tid(tokenizer, t) for t in toks if t[1] == "."]  # already in value order
            # integer tokens in value order: <-99> .. <-1>, <-0>, <+0>, <+1> .. <+99>
            self.int_ids_by_value = [self._tid(tokenizer, t) for t in sorted(
                ints, key=lambda t: (t[1] == "+", int(t[2:-1]) if t[1] == "+" else -int(t[2:-1])))]
            self.per_number = 2 if self.d > 0 else 1
            self.length = 2 * self.n * self.per_number
            return
        slots: list[str] = ["["]
        for i in range(self.n):
            slots += ["(", "N", ",", "N", ")"] + ([","] if i < self.n - 1 else [])
        slots.append("]")
        self.slots = slots
        added = set(tokenizer.get_added_vocab())
        pat = re.compile(r"^[0-9.,()\[\]\-]+$")
        self.candidates = [(i, s) for s, i in tokenizer.get_vocab().items() if s not in added and pat.match(s)]
        singles = {s for _, s in self.candidates if len(s) == 1}
        missing = set("0123456789.,()[]-") - singles
        if missing:
            raise ValueError(f"tokenizer lacks single-character tokens {sorted(missing)} needed by constrained "
                             "decoding")

    @staticmethod
    def _tid(tokenizer, tok: str) -> int:
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id):
            raise ValueError(f"tokenizer has no token {tok!r}; build it with odvla.model.tokenizer.build_tokenizer")
        return int(i)

    # ------------------------------------------------------------------------------------- character grammar
    def _num_step(self, sub, ch: str):
        d = self.d
        if sub == "S" or sub == "M":
            if ch == "-" and sub == "S":
                return "M"
            if ch == "0":
                return "Z"
            if ch in _DIGITS:
                return ("I", 1)
            return None
        if sub == "Z" or sub[0] == "I":
            k = 1 if sub == "Z" else sub[1]
            if sub != "Z" and ch in _DIGITS and k < MAX_INT_DIGITS:
                return ("I", k + 1)
            if ch == "." and d > 0:
                return ("F", 0)
            return None
        if sub[0] == "F" and ch in _DIGITS and sub[1] < d:
            return ("F", sub[1] + 1)
        return None

    def _num_complete(self, sub) -> bool:
        if self.d > 0:
            return sub == ("F", self.d)
        return sub == "Z" or (isinstance(sub, tuple) and sub[0] == "I")

    def _feed_char(self, state, ch: str):
        slot, sub = state
        while slot < len(self.slots):
            kind = self.slots[slot]
            if kind != "N":
                return (slot + 1, "S") if ch == kind else None
            nxt = self._num_step(sub, ch)
            if nxt is not None:
                return (slot, nxt)
            if not self._num_complete(sub):
                return None
            slot, sub = slot + 1, "S"
        return None

    def _num_min(self, sub) -> int:
        d = self.d
        if sub in ("S", "M"):
            return 2 + d if d > 0 else 1
        if sub == "Z" or sub[0] == "I":
            return 1 + d if d > 0 else 0
        return d - sub[1]

    # ----------------------------------------------------------------------------------------- token machine
    def start(self):
        return PRE

    def min_to_finish(self, state) -> int:
        """Fewest tokens from ``state`` to the end of ``<traj_end>`` (0 when DONE)."""
        m = self._min_cache.get(state)
        if m is None:
            m = self._min_cache[state] = self._min_to_finish(state)
        return m

    def _min_to_finish(self, state) -> int:
        if state == DONE:
            return 0
        if state == PRE:
            return 1 + self.min_to_finish(self._first())
        if self.codec.compact or self.action:
            return self.length - state[1] + 1
        slot, sub = state
        total = 1  # <traj_end>
        for j in range(slot, len(self.slots)):
            if self.slots[j] == "N":
                total += self._num_min(sub if j == slot else "S")
            else:
                total += 1
        return total

    def _first(self):
        if self.action:
            return ("a", 0)
        return ("c", 0) if self.codec.compact else (0, "S")

    def transitions(self, state) -> dict[int, tuple]:
        """token id -> next state, for every token allowed in ``state`` (cached)."""
        t = self._cache.get(state)
        if t is not None:
            return t
        if state == PRE:
            t = {self.start_id: self._first()}
        elif state == DONE:
            t = {}
        elif self.action:
            t = {self.end_id: DONE} if state[1] == self.length else {i: ("a", state[1] + 1) for i in self.action_ids}
        elif self.codec.compact:
            k = state[1]
            if k == self.length:
                t = {self.end_id: DONE}
            else:
                ids = self.frac_ids if (self.per_number == 2 and k % 2 == 1) else self.int_ids
                t = {i: ("c", k + 1) for i in ids}
        elif state[0] == len(self.slots):
            t = {self.end_id: DONE}
        else:
            t = {}
            for tid, s in self.candidates:
                st = state
                for ch in s:
                    st = self._feed_char(st, ch)
                    if st is None:
                        break
                if st is not None:
                    t[tid] = st
        self._cache[state] = t
        return t

    def allowed_arrays(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """``transitions(state)`` as tensors (cached): token ids [K] int64 and the fewest tokens to finish after
        each [K] int64, so a step selects the ids that still fit the budget without a Python loop over them."""
        a = self._arrays.get(state)
        if a is None and self.action and state not in (PRE, DONE) and state[1] < self.length:
            # every action step allows the same ids: one tensor shared by the six states
            a = self._arrays[state] = (self._action_ids, torch.full((len(self.action_ids),),
                                                                    self.length - state[1], dtype=torch.long))
        if a is None:
            t = self.transitions(state)
            a = self._arrays[state] = (torch.tensor(list(t), dtype=torch.long),
                                       torch.tensor([self.min_to_finish(n) for n in t.values()], dtype=torch.long))
        return a

    def ids_by_value(self, state) -> Optional[list[int]]:
        """Compact grammar, inside a number: the slot's token ids in order of value; otherwise None."""
        if not self.codec.compact or state in (PRE, DONE) or state[1] >= self.length:
            return None
        return self.frac_ids if (self.per_number == 2 and state[1] % 2 == 1) else self.int_ids_by_value

    def advance(self, state, token_id: int):
        """Next state after ``token_id``, or None when the token breaks the grammar."""
        return self.transitions(state).get(int(token_id))


class TrajectoryLogitsProcessor(LogitsProcessor):
    """Masks logits so each row's trajectory follows :class:`TrajectoryGrammar` and ends within the budget.

    ``tasks``: the batch's task names (rows with 'planning' must answer with exactly one trajectory).
    ``prompt_len``: number of prompt ids at the front of ``input_ids`` (0 when generating from ``inputs_embeds``).
    ``number_choice``: 'argmax' (leave it to greedy search) or 'median' (compact tokens; see the module docstring).
    """

    def __init__(self, grammar: TrajectoryGrammar, tasks: list[str], eos_token_id: int, max_new_tokens: int,
                 prompt_len: int = 0, number_choice: str = "argmax"):
        check_number_choice(number_choice, grammar.codec.compact)
        self.median = number_choice == "median"
        self.g = grammar
        self.eos = int(eos_token_id)
        self.max_new = int(max_new_tokens)
        self.prompt_len = int(prompt_len)
        self.planning = [t == "planning" for t in tasks]
        need = grammar.min_to_finish(PRE) + 1
        if any(self.planning) and self.max_new < need:
            raise ValueError(f"max_new_tokens={max_new_tokens} cannot hold a trajectory: constrained decoding needs at "
                             f"least {need} tokens")
        # per row: mode in {'free', 'traj', 'end', 'finished'}; grammar state when 'traj'
        self.mode = ["traj" if p else "free" for p in self.planning]
        self.state: list[Optional[tuple]] = [PRE if p else None for p in self.planning]
        self.seen = 0

    def _feed(self, b: int, tok: int) -> None:
        mode = self.mode[b]
        if mode == "finished":
            return
        if tok == self.eos:
            self.mode[b] = "finished"
            return
        if mode == "free":
            if tok == self.g.start_id:
                self.mode[b], self.state[b] = "traj", self.g._first()
            return
        if mode == "traj":
            nxt = self.g.advance(self.state[b], tok)
            if nxt is None:  # only possible if every allowed logit was -inf; stop constraining this row
                self.mode[b] = "free"
            elif nxt == DONE:
                self.mode[b] = "end" if self.planning[b] else "free"
            else:
                self.state[b] = nxt
            return
        if mode == "end":
            self.mode[b] = "finished"

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        gen = input_ids[:, self.prompt_len:]
        if gen.shape[1] > self.seen:  # one device->host copy for the new tokens of every row
            for pos, row in enumerate(gen[:, self.seen:].T.tolist()):
                for b, tok in enumerate(row):
                    self._feed(b, tok)
        self.seen = gen.shape[1]
        remaining = self.max_new - gen.shape[1]  # tokens left including the one chosen now
        # rows left unconstrained ('free' rows that may still start a trajectory) keep every logit; the others get
        # their allowed ids as (row, id) pairs, gathered on the host and scattered into the mask in one call
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        rows, cols = [], []
        for b in range(scores.shape[0]):
            mode = self.mode[b]
            if mode == "traj":
                ordered = self.g.ids_by_value(self.state[b]) if self.median else None
                if ordered is not None and remaining - 1 >= self.g.min_to_finish(self.g.advance(self.state[b],
                                                                                             ordered[0])):
                    rows.append(torch.tensor([b]))
                    cols.append(torch.tensor([_median_token(scores[b], ordered)]))
                    continue
                ids, mins = self.g.allowed_arrays(self.state[b])
                ids = ids[mins <= remaining - 1]
                if not len(ids):
                    ids = torch.tensor([self.eos])
                rows.append(torch.full((len(ids),), b))
                cols.append(ids)
            elif mode == "end":
                rows.append(torch.tensor([b]))
                cols.append(torch.tensor([self.eos]))
            else:
                mask[b] = True
                if mode == "free" and self.g.min_to_finish(PRE) > remaining:
                    mask[b, self.g.start_id] = False
        if rows:
            mask[torch.cat(rows), torch.cat(cols)] = True
        return scores.masked_fill(~mask.to(scores.device), torch.finfo(scores.dtype).min)


def _median_token(scores: torch.Tensor, ordered_ids: list[int]) -> int:
    """``scores`` [V] logits; ``ordered_ids`` a slot's token ids in order of value -> the id at the median of the
    softmax over those ids (the first whose cumulative probability reaches 1/2)."""
    ids = torch.as_tensor(ordered_ids, device=scores.device)
    cdf = torch.softmax(scores[ids].float(), dim=0).cumsum(0)
    k = int(torch.searchsorted(cdf, torch.tensor([0.5], device=cdf.device)).clamp_max(len(ordered_ids) - 1))
    return int(ordered_ids[k])
