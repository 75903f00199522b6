"""OpenDriveVLA: vision encoder + token-specific projectors + Qwen2 LLM, trained as text.

The model exposes parts (``MODEL_PARTS``) that a training stage may train; which parts a stage trains is data
(the stage's ``stage.trainable`` list), never a stage name known here.

Data flow for a batch (model/batch.py, ``B`` rows):

    images [B,6,3,H,W] ─► VisionEncoder ─► scene [B,Ns,Cv], agent [B,Ka,Cv], map [B,Km,Cv]  (+ det/map/motion losses)
                                             │ projectors (one 2-layer MLP each)
                                             ▼
    prompt ids [B,L] (placeholders expanded) ─► embeddings [B,L,H], visual tokens written at the placeholders
                                             ▼
                                Qwen2ForCausalLM ─► answer text (loss on answer tokens only)

Trajectories are text in the released OpenDriveVLA form (``odvla.model.traj_codec``); generation is greedy with a
``LogitsProcessor`` that keeps trajectories in the grammar (``odvla.model.constrained_decoding``). Tracking state
across keyframes is explicit (``SceneState`` lists in and out of ``generate``), never stored on the module.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Optional

import numpy as np
import torch
from torch import nn
from transformers import LogitsProcessorList

from odvla.model.clip_batch import clip_frames, is_clip, supervised_frames
from odvla.model.constrained_decoding import TrajectoryGrammar, TrajectoryLogitsProcessor, check_number_choice
from odvla.model.ego_token import EGO_TOKEN, EgoProjector
from odvla.model.generate_output import PLAN_PARTS, GenerateOutput, StepClock
from odvla.model.llm import build_llm
from odvla.model.projectors import VisualProjectors
from odvla.model.profiling import scope
from odvla.model.prompt import MAP_TOKEN, SCENE_TOKEN, TRACK_TOKEN
from odvla.model.text_inputs import ChatEncoder, to_numpy
from odvla.model.tokenizer import add_model_tokens, build_tokenizer
from odvla.model.traj_codec import TrajectoryCodec, TrajectoryParseError
from odvla.model.vision_encoder import VisionEncoder

LOSS_KEYS = ("lm", "det", "map", "motion")
"""The loss terms ``forward`` returns; a stage weighs them with ``stage.loss_weights``."""

COUNT_KEYS = ("answer_tokens", "llm_tokens")
"""Token counts ``forward`` returns beside the losses (int64; summed over a clip's supervised frames)."""

MODEL_PARTS = {
    "projectors": "the scene / agent / map projectors (and the ego projector when text.ego_token)",
    "llm": "the Qwen2 language model, embeddings and head included",
    "vision": "the whole visual encoder: backbone, FPN, BEV, scene sampler, agent and map decoders",
    "agent_heads": "only the visual encoder's agent class / box / motion heads",
}
"""Trainable parts, by name. When ``vision`` is not trained the encoder also stays in eval mode (frozen BatchNorm
statistics), even with ``agent_heads``."""


class OpenDriveVLA(nn.Module):
    """The full model for ``cfg`` (``ModelConfig``). ``tokenizer``: reuse one (an export's); None = build it.
    ``llm_context``: a zero-argument callable giving the context manager the LLM is built in (the trainer's
    partitioned init under ZeRO-3, so no rank holds the whole LLM); None = build it in place."""

    def __init__(self, cfg, tokenizer=None, llm_context: Optional[Callable[[], ContextManager]] = None):
        super().__init__()
        self.config = cfg
        if tokenizer is not None:
            add_model_tokens(tokenizer, cfg.text)  # no-op for a tokenizer saved from this model
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
        self.codec = TrajectoryCodec(cfg.text)
        check_number_choice(cfg.text.number_choice, cfg.text.compact_tokens)  # fail at build, not at generate
        self.chat = ChatEncoder(self.tokenizer, cfg)
        self.vision = VisionEncoder(cfg)
        with (llm_context() if llm_context is not None else contextlib.nullcontext()):
            self.llm = build_llm(cfg, self.tokenizer)
        self.projectors = VisualProjectors(self.vision.out_channels, cfg.llm.hidden_size)
        self.ego_projector = EgoProjector(cfg.llm.hidden_size) if cfg.text.ego_token else None
        self.ego_token_id = int(self.tokenizer.convert_tokens_to_ids(EGO_TOKEN)) if cfg.text.ego_token else None
        self.placeholder_ids = {ph: int(self.tokenizer.convert_tokens_to_ids(ph))
                                for ph in (SCENE_TOKEN, TRACK_TOKEN, MAP_TOKEN)}
        self._grammar: Optional[TrajectoryGrammar] = None
        self._vision_frozen = False
        if cfg.gradient_checkpointing:
            if hasattr(self.llm, "activation_checkpointing_enable"):  # transformers >= 5.2x name
                self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------------------------------ trainable sets
    def set_trainable(self, parts) -> list[str]:
        """Freeze everything but ``parts`` (names of ``MODEL_PARTS``) and return the trainable parameter names.

        Without ``vision`` the visual encoder stays in eval mode (frozen BatchNorm statistics of the backbone) even
        when the model is put in train mode.
        """
        parts = [parts] if isinstance(parts, str) else list(parts)
        bad = [p for p in parts if p not in MODEL_PARTS]
        if bad or not parts:
            raise ValueError(f"unknown trainable part(s) {bad or parts}; expected some of {', '.join(MODEL_PARTS)}")
        self.requires_grad_(False)
        modules = {"projectors": [self.projectors, self.ego_projector], "llm": [self.llm], "vision": [self.vision]}
        for part in parts:
            for m in modules.get(part, []):
                if m is not None:
                    m.requires_grad_(True)
        if "agent_heads" in parts:
            for p in self.vision.agent_motion_parameters():
                p.requires_grad_(True)
        self.vision.backbone.freeze_stages()  # model.vision.frozen_stages never train, whatever the stage
        self._vision_frozen = "vision" not in parts
        self.train(self.training)
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self._vision_frozen:
            self.vision.eval()
        return self

    # ------------------------------------------------------------------------------------------------ embed
    def _embed(self, batch: dict, input_ids: torch.Tensor, vis) -> torch.Tensor:
        """Token embeddings [B, L, H] with the projected visual tokens written at the placeholder positions."""
        emb = self.llm.get_input_embeddings()(input_ids)
        pdtype = self.projectors.scene.fc1.weight.dtype
        for ph, tokens, proj in ((SCENE_TOKEN, vis.scene_tokens, self.projectors.scene),
                                 (TRACK_TOKEN, vis.agent_tokens, self.projectors.agent),
                                 (MAP_TOKEN, vis.map_tokens, self.projectors.map)):
            mask = input_ids == self.placeholder_ids[ph]  # [B, L]
            counts = mask.sum(dim=1)
            n = tokens.shape[1]
            bad = (counts != n).nonzero().flatten().tolist()
            if bad:
                b = bad[0]
                raise ValueError(f"sample {batch['sample_token'][b]!r}: prompt has {int(counts[b])} {ph} positions, "
                                 f"the vision encoder gave {n} tokens")
            x = proj(tokens.to(pdtype)).to(emb.dtype)  # [B, n, H]
            emb = emb.masked_scatter(mask.unsqueeze(-1), x.reshape(-1, x.shape[-1]))
        if self.ego_projector is not None:
            emb = self._embed_ego(batch, input_ids, emb)
        return emb

    def _embed_ego(self, batch: dict, input_ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Write the ego embedding at each row's ``<EGO>`` position (planning rows have one, other tasks none)."""
        mask = input_ids == self.ego_token_id  # [B, L]
        counts = mask.sum(dim=1)
        if bool((counts > 1).any()):
            b = int((counts > 1).nonzero()[0, 0])
            raise ValueError(f"sample {batch['sample_token'][b]!r}: prompt has {int(counts[b])} {EGO_TOKEN} "
                             "positions, expected at most 1")
        if not bool(counts.any()):
            return emb
        x = self.ego_projector.from_batch(batch).to(emb.dtype)  # [B, H]
        return emb.masked_scatter(mask.unsqueeze(-1), x[counts > 0])

    def _device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ---------------------------------------------------------------------------------------------- forward
    def perceive(self, batch: dict, states=None, compute_losses: bool = False):
        """The per-frame step shared by training, evaluation and serving: one keyframe batch through the vision
        encoder with each row's ``SceneState`` of its scene's previous keyframe (None: start fresh). Returns the
        ``VisionOutput`` (tokens, losses, predictions and the new states: identity kept on tracked slots, births,
        deaths; ``odvla.model.track_policy``)."""
        return self.vision(batch, states=states, compute_losses=compute_losses)

    def forward(self, batch: dict, states=None) -> dict:
        """Training losses: ``lm`` (mean cross-entropy over answer tokens), ``det``, ``map``, ``motion`` (vision
        encoder; zeros without ground truth), ``answer_tokens`` (int64 count of supervised tokens) and ``llm_tokens``
        (int64 count of the LLM's input tokens). Only tensors
        come back (distributed engines walk the outputs); the new states of a frame come from ``perceive``.

        ``batch``: a frame batch (``model/batch.py``), with ``states`` the rows' states of the previous keyframe;
        or a clip batch (``model/clip_batch.py``): its frames run in time order carrying the states, the frames
        not marked in ``clip_supervised`` without gradients, and the loss terms are the mean over the supervised
        frames (``answer_tokens`` their sum)."""
        if is_clip(batch):
            return self._forward_clip(batch, states)
        return self._forward_frame(batch, states)[0]

    def _forward_frame(self, batch: dict, states) -> tuple[dict, list]:
        vis = self.perceive(batch, states, compute_losses=True)
        with scope("text.prompt"):
            tb = self.chat.encode(batch, with_answers=True, device=self._device())
        with scope("llm.embed"):
            emb = self._embed(batch, tb.input_ids, vis)
        with scope("llm.forward_loss"):
            out = self.llm(inputs_embeds=emb, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                           labels=tb.labels, use_cache=False)
        losses = {"lm": out.loss.float()}
        for k in LOSS_KEYS[1:]:
            v = vis.losses.get(k)
            losses[k] = v.float() if v is not None else out.loss.new_zeros(()).float()
        losses["answer_tokens"] = (tb.labels[:, 1:] != -100).sum()
        losses["llm_tokens"] = tb.attention_mask.sum()  # LLM input tokens of the batch (prompt + answer)
        return losses, list(vis.states)

    def _forward_clip(self, batch: dict, states) -> dict:
        frames, supervised = clip_frames(batch), supervised_frames(batch)
        total: dict = {}
        n = 0
        for fb, sup in zip(frames, supervised):
            if not sup:  # earlier frame: state only (matching still runs, so tracks follow their instances)
                with torch.no_grad(), scope("clip.context"):
                    states = self.perceive(fb, states, compute_losses=True).states
                continue
            out, states = self._forward_frame(fb, states)
            n += 1
            for k, v in out.items():
                total[k] = v if k not in total else total[k] + v
        return {k: (v if k in COUNT_KEYS else v / n) for k, v in total.items()}

    # --------------------------------------------------------------------------------------------- generate
    @property
    def grammar(self) -> TrajectoryGrammar:
        if self._grammar is None:
            self._grammar = TrajectoryGrammar(self.tokenizer, self.codec)
        return self._grammar

    @torch.no_grad()
    def generate(self, batch: dict, states=None, max_new_tokens: Optional[int] = None,
                 constrained: bool = True) -> GenerateOutput:
        """Greedy answers for a batch (``answer`` fields are ignored). ``states``: per-row ``SceneState`` of the
        previous keyframe of each row's scene (None: start fresh); the new states come back in the output."""
        max_new = int(max_new_tokens or self.config.text.max_answer_tokens)
        was_training = self.training
        self.eval()
        clock = [time.perf_counter()]
        try:
            vis = self.perceive(batch, states, compute_losses=False)
            clock.append(time.perf_counter())
            tb = self.chat.encode(batch, with_answers=False, device=self._device())
            emb = self._embed(batch, tb.input_ids, vis)
            tasks = list(batch["task"])
            eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
            steps = StepClock()
            procs = LogitsProcessorList()
            if constrained:
                procs.append(TrajectoryLogitsProcessor(self.grammar, tasks, eos, max_new,
                                                       number_choice=self.config.text.number_choice))
            procs.append(steps)
            clock.append(time.perf_counter())
            seqs = self.llm.generate(inputs_embeds=emb, attention_mask=tb.attention_mask, max_new_tokens=max_new,
                                     do_sample=False, num_beams=1, logits_processor=procs, eos_token_id=eos,
                                     pad_token_id=pad, use_cache=True)
            clock.append(time.perf_counter())
        finally:
            self.train(was_training)
        B = len(tasks)
        answers, parsed, errors, ntok = [], [], [], []
        trajs = np.full((B, self.codec.num_points, 2), np.nan)
        for b in range(B):
            ids = seqs[b].tolist()
            n = ids.index(eos) + 1 if eos in ids else len(ids)
            ntok.append(n)
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
            answers.append(text)
            span = self.codec.find(text)
            err = None
            ok = False
            if span is not None:
                try:
                    trajs[b] = self.codec.decode(text if tasks[b] == "planning" else span,
                                                 to_numpy(batch["ego_state"][b]) if "ego_state" in batch else None)
                    ok = True
                except TrajectoryParseError as e:
                    err = str(e)
            elif tasks[b] == "planning":
                err = f"no {self.codec.tokens()[0]} in the answer {text[:80]!r}"
            parsed.append(ok)
            errors.append(err)
        first = steps.calls[0] if steps.calls else clock[3]
        marks = [*clock[:3], first, clock[3], time.perf_counter()]
        timings = {k: 1e3 * (b - a) for k, a, b in zip(PLAN_PARTS, marks[:-1], marks[1:])}
        timings["decode_steps"] = len(steps.calls)
        return GenerateOutput(answers=answers, trajectories=trajs, parsed=parsed, errors=errors,
                              states=list(vis.states), num_generated_tokens=ntok, timings=timings)
