"""Batch text -> token ids: chat template, visual placeholder expansion, answer labels.

For each row of a batch (model/batch.py) the prompt is ``system`` + ``user`` (``odvla.model.prompt``) in the chat
template with the assistant header; each ``<SCENE>`` / ``<TRACK>`` / ``<MAP>`` placeholder is expanded to
``num_scene_queries`` / ``num_agent_tokens`` / ``num_map_queries`` copies so that the model can splice one visual
token per position. The target is the answer text followed by ``<|im_end|>``; planning rows with an empty answer get
the codec's encoding of ``future_traj``. Labels are -100 everywhere except on answer tokens, and on the tokens of
waypoints whose ``future_mask`` is 0 (end of a scene: the position is padding, not a target).

Rows are left-padded (the layout batched generation needs); ``position_ids`` count only real tokens, exactly as
``generate`` derives them from the attention mask, so training and decoding see the same positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from odvla.model.prompt import MAP_TOKEN, SCENE_TOKEN, TRACK_TOKEN, build_user_turn, system_prompt
from odvla.model.prompt_released import planning_turn_for_row, released_system_prompt
from odvla.model.tokenizer import IM_END
from odvla.model.traj_codec import TrajectoryCodec

IGNORE_INDEX = -100


@dataclass
class TextBatch:
    """``input_ids``, ``attention_mask``, ``position_ids`` [B, L] int64 (left-padded); ``labels`` [B, L] or None;
    ``answer_lengths`` tokens of each target (0 without answers)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: Optional[torch.Tensor]
    answer_lengths: list[int]


def to_numpy(x) -> np.ndarray:
    """A batch field (tensor or array-like) as float64 numpy."""
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


class ChatEncoder:
    """Builds :class:`TextBatch` for a batch; ``tokenizer`` from ``build_tokenizer``, ``model_cfg`` a ModelConfig."""

    def __init__(self, tokenizer, model_cfg):
        self.tok = tokenizer
        self.cfg = model_cfg
        self.codec = TrajectoryCodec(model_cfg.text)
        v = model_cfg.vision
        self.expand = {SCENE_TOKEN: int(v.num_scene_queries), TRACK_TOKEN: int(v.num_agent_tokens),
                       MAP_TOKEN: int(v.num_map_queries)}
        self.released = getattr(model_cfg.text, "prompt", "reference") == "released"
        self.system = released_system_prompt(model_cfg.text) if self.released else system_prompt(model_cfg.text)

    # ---------------------------------------------------------------------------------------------- texts
    def user_turn(self, batch: dict, b: int) -> str:
        try:
            if self.released and batch["task"][b] == "planning":
                return planning_turn_for_row(batch, b, self.cfg.text, to_numpy)
            return build_user_turn(batch["task"][b], batch["question"][b], to_numpy(batch["ego_state"][b]),
                                   int(batch["command"][b]), to_numpy(batch["past_traj"][b]), to_numpy(batch["past_mask"][b]),
                                   codec=self.codec, ego_token=bool(self.cfg.text.ego_token),
                                   ego_text=bool(self.cfg.text.ego_text))
        except ValueError as e:
            raise ValueError(f"sample {batch['sample_token'][b]!r}: {e}") from e

    def prompt_text(self, batch: dict, b: int) -> str:
        """Chat text up to the assistant header, placeholders expanded."""
        text = self.tok.apply_chat_template(
            [{"role": "system", "content": self.system}, {"role": "user", "content": self.user_turn(batch, b)}],
            tokenize=False, add_generation_prompt=True)
        for ph, n in self.expand.items():
            text = text.replace(ph, ph * n)
        return text

    def answer_text(self, batch: dict, b: int) -> str:
        """Target assistant text of row ``b`` (without the end token)."""
        task, answer = batch["task"][b], batch["answer"][b]
        if answer:
            return answer
        if task == "planning":
            try:
                return self.codec.encode(to_numpy(batch["future_traj"][b]), to_numpy(batch["ego_state"][b]))
            except ValueError as e:
                raise ValueError(f"sample {batch['sample_token'][b]!r}: future_traj: {e}") from e
        raise ValueError(f"sample {batch['sample_token'][b]!r}: task {task!r} has an empty answer; only 'planning' "
                         "rows take their target from future_traj")

    # ------------------------------------------------------------------------------------------- encoding
    def _answer_ids(self, batch: dict, b: int) -> tuple[list[int], list[int]]:
        text = self.answer_text(batch, b)
        enc = self.tok(text + IM_END, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = list(ids)
        fm = batch.get("future_mask")
        if batch["task"][b] == "planning" and not batch["answer"][b] and fm is not None:
            valid = to_numpy(fm[b]) > 0.5
            if not valid.all():
                spans = [s for s, ok in zip(self.codec.point_spans(text), valid) if not ok]
                for k, (s, e) in enumerate(enc["offset_mapping"]):
                    if e > s and any(s < pe and e > ps for ps, pe in spans):
                        labels[k] = IGNORE_INDEX
        return ids, labels

    def encode(self, batch: dict, with_answers: bool, device=None) -> TextBatch:
        B = len(batch["task"])
        seqs, labs, alens = [], [], []
        max_prompt, max_answer = self.cfg.text.max_prompt_tokens, self.cfg.text.max_answer_tokens
        for b in range(B):
            p = self.tok(self.prompt_text(batch, b), add_special_tokens=False)["input_ids"]
            if len(p) > max_prompt:
                raise ValueError(f"sample {batch['sample_token'][b]!r}: prompt has {len(p)} tokens, more than "
                                 f"text.max_prompt_tokens={max_prompt}")
            ids, lab = list(p), [IGNORE_INDEX] * len(p)
            a_len = 0
            if with_answers:
                a, al = self._answer_ids(batch, b)
                if len(a) > max_answer:
                    raise ValueError(f"sample {batch['sample_token'][b]!r}: answer has {len(a)} tokens, more than "
                                     f"text.max_answer_tokens={max_answer}")
                ids += a
                lab += al
                a_len = len(a)
            seqs.append(ids)
            labs.append(lab)
            alens.append(a_len)
        L = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        input_ids = torch.full((B, L), pad, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, (s, lab) in enumerate(zip(seqs, labs)):
            input_ids[b, L - len(s):] = torch.tensor(s)
            labels[b, L - len(s):] = torch.tensor(lab)
            attn[b, L - len(s):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        tb = TextBatch(input_ids, attn, pos, labels if with_answers else None, alens)
        if device is not None:
            tb.input_ids, tb.attention_mask, tb.position_ids = (t.to(device) for t in
                                                                (tb.input_ids, tb.attention_mask, tb.position_ids))
            if tb.labels is not None:
                tb.labels = tb.labels.to(device)
        return tb
