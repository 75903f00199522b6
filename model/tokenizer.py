"""Tokenizer: Qwen2.5's from a local HF folder, or a small byte-level BPE trained offline for presets without one.

The offline BPE (``tiny``) copies Qwen2.5's pre-tokenisation (its split regex: every digit is its own pre-token,
letters group, punctuation groups; then byte-level), so digit handling, and therefore tokens per trajectory, behave
like the real tokenizer. It is trained with the ``tokenizers`` library on a corpus generated deterministically from
this package's own prompt and answer templates (:func:`training_corpus`), so the same config always yields the same
vocabulary. The platform saves it with the run (``tokenizer.save_pretrained``); model code never writes files.

Both paths then add the model's own tokens: the visual placeholders and markers of ``odvla.model.prompt``, the
trajectory markers, and with ``text.compact_tokens`` the number tokens of the compact encoding. They are ordinary
(non-special) added tokens, so ``decode(..., skip_special_tokens=True)`` keeps them in answers.
"""
from __future__ import annotations

import functools

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from odvla.model.constants import COMMANDS, DETECTION_CLASSES, MAP_CLASSES
from odvla.model.ego_token import EGO_TOKEN
from odvla.model.prompt import MARKERS, PLACEHOLDERS, build_user_turn, system_prompt
from odvla.model.traj_codec import TrajectoryCodec

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
"""Qwen2.5's pre-tokeniser split pattern (tokenizer.json of Qwen2.5-*-Instruct): ``\\p{N}`` = one digit each."""

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen2.5's chat layout (ChatML) for system / user / assistant messages."""


def model_tokens(text_cfg) -> list[str]:
    """Tokens the model adds to any base vocabulary: placeholders, markers, trajectory (and compact number) tokens,
    and ``<EGO>`` when ``text_cfg.ego_token``."""
    ego = [EGO_TOKEN] if getattr(text_cfg, "ego_token", False) else []
    return list(PLACEHOLDERS) + ego + list(MARKERS) + TrajectoryCodec(text_cfg).tokens()


def training_corpus(text_cfg, samples: int = 400, seed: int = 0) -> list[str]:
    """Deterministic texts in the shapes the model reads and writes: chat-formatted planning prompts with answers,
    and question / answer sentences over the contract's classes and commands."""
    rng = np.random.default_rng(seed)
    codec = TrajectoryCodec(type(text_cfg)(traj_encoding="absolute", traj_decimals=text_cfg.traj_decimals))
    sys_msg = system_prompt(text_cfg)
    texts = []
    classes = [c.replace("_", " ") for c in DETECTION_CLASSES]
    for i in range(samples):
        speed = float(rng.uniform(0, 15))
        ego = np.array([speed, rng.normal(0, 0.3), rng.normal(0, 1), rng.normal(0, 0.5), rng.normal(0, 0.1), speed,
                        rng.normal(0, 0.2)])
        steps = np.arange(1, 7)[:, None] * 0.5
        fut = np.concatenate([speed * steps, rng.normal(0, 0.3) * steps ** 2], axis=1)
        past = np.concatenate([-speed * steps[:4][::-1], rng.normal(0, 0.2, (4, 1))], axis=1)
        cmd = int(rng.integers(0, len(COMMANDS)))
        user = build_user_turn("planning", "", ego, cmd, past, np.ones(4))
        texts.append(f"{IM_START}system\n{sys_msg}{IM_END}\n{IM_START}user\n{user}{IM_END}\n"
                     f"{IM_START}assistant\n{codec.encode(fut)}{IM_END}\n")
        c = classes[i % len(classes)]
        m = MAP_CLASSES[i % len(MAP_CLASSES)]
        n = int(rng.integers(0, 12))
        d = float(rng.uniform(1, 50))
        texts.append(
            f"How many {c}s are in the scene? There are {n} {c}s in the scene. "
            f"What is the closest object to the ego vehicle? The closest object is a {c} {d:.1f} meters ahead. "
            f"Describe the map around the ego vehicle. There is a lane {m} on the left and a pedestrian {m} ahead. "
            f"What should the ego vehicle do next? The ego vehicle should {COMMANDS[cmd]} and drive safely. "
            f"Predict the future trajectory of the {c}. The {c} will move to {codec.encode(fut)}. "
            f"Is the {c} moving or parked? The {c} is {'moving' if n % 2 else 'parked'}, "
            f"with a speed of {speed:.2f} m/s. Describe the scene. The ego vehicle drives on a road with "
            f"{n} cars, traffic lights, buildings and trees; the weather is {'sunny' if n % 3 else 'rainy'}.")
    return texts


@functools.lru_cache(maxsize=8)
def _trained_bpe_json(vocab_size: int, decimals: int, encoding: str = "absolute", compact: bool = False) -> str:
    from odvla.model.config import TextConfig

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # the corpus carries the system prompt of this encoding, so its sentences become whole-word merges
    corpus = training_corpus(TextConfig(traj_decimals=decimals, traj_encoding=encoding, compact_tokens=compact))
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def train_offline_bpe(vocab_size: int, decimals: int = 2, encoding: str = "absolute",
                      compact: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE of ``vocab_size`` entries (256 bytes + 3 special tokens + merges), Qwen2.5 pre-tokenisation,
    ChatML template, trained on :func:`training_corpus` for this trajectory encoding (its system prompt differs).
    Deterministic; trained once per process and setting."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"llm.tokenizer_vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + special tokens), "
                         f"got {vocab_size}")
    backend = Tokenizer.from_str(_trained_bpe_json(int(vocab_size), int(decimals), str(encoding), bool(compact)))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=None, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   unk_token=None, chat_template=CHAT_TEMPLATE, model_max_length=32768,
                                   padding_side="left", clean_up_tokenization_spaces=False)


def add_model_tokens(tokenizer, text_cfg) -> int:
    """Add :func:`model_tokens` (idempotent); returns the number of tokens added."""
    return tokenizer.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False, lstrip=False,
                                            rstrip=False) for t in model_tokens(text_cfg)])


def build_tokenizer(model_cfg) -> PreTrainedTokenizerFast:
    """Tokenizer for ``model_cfg`` (``ModelConfig``): local HF folder ``llm.path`` (Qwen2.5) or the offline BPE,
    plus the model's tokens; left padding (batched generation); eos = ``<|im_end|>``, pad = ``<|endoftext|>``."""
    if model_cfg.llm.path:
        tok = AutoTokenizer.from_pretrained(model_cfg.llm.path)
        if tok.chat_template is None:
            tok.chat_template = CHAT_TEMPLATE
        if tok.pad_token is None:
            tok.pad_token = ENDOFTEXT
        tok.padding_side = "left"
    else:
        t = model_cfg.text
        tok = train_offline_bpe(model_cfg.llm.tokenizer_vocab_size, t.traj_decimals, t.traj_encoding, t.compact_tokens)
    add_model_tokens(tok, model_cfg.text)
    for t in (IM_START, IM_END, ENDOFTEXT):
        if tok.convert_tokens_to_ids(t) is None or tok.convert_tokens_to_ids(t) == tok.unk_token_id:
            raise ValueError(f"tokenizer of {model_cfg.llm.path or 'the offline BPE'} lacks the chat token {t}")
    return tok
