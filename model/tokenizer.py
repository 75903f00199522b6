"""Tokenizer: Qwen2.5's from a local HF folder, or a small byte-level BPE trained offline for presets without one.

The offline BPE (``tiny``) copies Qwen2.5's pre-tokenisation (its split regex: every digit is its own pre-token,
letters group, punctuation groups; then byte-level), so digit handling, and therefore tokens per trajectory, behave
like the real tokenizer. It is trained with the ``tokenizers`` library on a corpus generated deterministically from
this package's own prompt and answer templates (:func:`training_corpus`), so the same config always yields the same
vocabulary. The platform saves it with the run (``tokenizer.save_pretrained``); model code never writes files.

Both paths then add the model's own tokens: the visual placeholders and markers of ``odvla.model.prompt``, the
trajectory markers, and with ``text.compact_tokens`` the number tokens of the compact encoding. They are ordinary
(non-special) added tokens, so ``decode(..., skip_special_tokens=True)`` keeps them in answers.

``llm.tokenizer: qwen2.5`` (the 0.5b / 3b / 7b presets without ``llm.path``) builds Qwen2.5's real vocabulary
offline (:func:`qwen25_tokenizer`): the 151,643 byte-level BPE ranks that the PyPI package ``dashscope`` ships as
package data (``dashscope/resources/qwen.tiktoken``; located through its installed-files record, so the cloud
client is never imported; ``pip install 'opendrivevla[qwen]'``), Qwen2.5's split regex and NFC normaliser, and
Qwen2.5's 22 added tokens at ids 151643..151664 (:data:`QWEN25_ADDED_TOKENS`). The model's own tokens then come
from 151665 on, in the released OpenDriveVLA order when ``text.prompt`` is ``released``.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from odvla.model.constants import COMMANDS, DETECTION_CLASSES, MAP_CLASSES
from odvla.model.ego_token import EGO_TOKEN
from odvla.model.prompt import MARKERS, PLACEHOLDERS, build_user_turn, system_prompt
from odvla.model.prompt_released import RELEASED_ADDED_TOKENS
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
    """Tokens the model adds to any base vocabulary, in id order.

    ``text.prompt: released``: the released OpenDriveVLA tokens first (``<trajectory>``, ``<track_start>``, ...,
    :data:`RELEASED_ADDED_TOKENS`, ids 151665.. on Qwen2.5), then the placeholders. Otherwise: placeholders, markers.
    Both then ``<EGO>`` when ``text_cfg.ego_token``, and the trajectory (and compact number) tokens not added yet."""
    ego = [EGO_TOKEN] if getattr(text_cfg, "ego_token", False) else []
    if getattr(text_cfg, "prompt", "reference") == "released":
        head = list(RELEASED_ADDED_TOKENS) + list(PLACEHOLDERS) + ego
    else:
        head = list(PLACEHOLDERS) + ego + list(MARKERS)
    return head + [t for t in TrajectoryCodec(text_cfg).tokens() if t not in head]


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


# ----------------------------------------------------------------------------------------- Qwen2.5's vocabulary
QWEN25_RANKS_FILE = "dashscope/resources/qwen.tiktoken"
"""Qwen's byte-level BPE ranks (base64 token, rank per line) inside the ``dashscope`` distribution (Apache-2.0)."""
QWEN25_BASE_VOCAB = 151643
QWEN25_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
"""Qwen2.5-*-Instruct ``tokenizer_config.json`` ``added_tokens_decoder``: ids 151643..151664 in this order, with
their ``special`` flag."""
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen2.5-Instruct's ChatML template without its tool-calling branch: a default system turn when the messages
have none, then ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message."""
_QWEN25_BUILD_VERSION = "1"
"""Part of the cache key: bump when the tokenizer.json this module builds changes."""


class TokenizerSourceError(ValueError):
    """The Qwen2.5 vocabulary file or an ``llm.path`` tokenizer is missing or unusable (names the key or path)."""


def qwen25_ranks_path() -> Path:
    """Path of ``dashscope/resources/qwen.tiktoken`` from the installed ``dashscope`` distribution's file record
    (``importlib.metadata``; nothing of ``dashscope`` is imported)."""
    try:
        dist = metadata.distribution("dashscope")
    except metadata.PackageNotFoundError:
        raise TokenizerSourceError(
            "model.llm.tokenizer 'qwen2.5' needs Qwen's BPE ranks from the 'dashscope' package, which is not "
            "installed: pip install 'opendrivevla[qwen]' (make venv installs it), or set model.llm.path to a local "
            "Qwen2.5 folder") from None
    path = Path(dist.locate_file(QWEN25_RANKS_FILE))
    if not path.is_file():
        raise TokenizerSourceError(f"dashscope {dist.version} is installed but has no {QWEN25_RANKS_FILE} "
                                   f"(looked at {path})")
    return path


def read_bpe_ranks(path) -> dict[bytes, int]:
    """tiktoken ranks file -> {token bytes: rank}; a malformed line is an error naming the file and line."""
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError as e:
                raise TokenizerSourceError(f"{path}: line {n} is not '<base64 token> <rank>': {line[:80]!r}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerSourceError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def bpe_from_ranks(ranks: dict[bytes, int]) -> Tokenizer:
    """``tokenizers`` byte-level BPE equal to tiktoken's rank-ordered merging: every split of a token into two
    existing tokens becomes a merge at that token's rank (as transformers' tiktoken converter derives them)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()

    def u(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    merges = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    bpe = Tokenizer(models.BPE(vocab={u(t): r for t, r in ranks.items()},
                               merges=[(u(m[3]), u(m[4])) for m in merges], unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    return bpe


def cache_dir() -> Path:
    """``$ODVLA_CACHE_DIR``, else ``$XDG_CACHE_HOME/odvla``, else ``~/.cache/odvla``."""
    if os.environ.get("ODVLA_CACHE_DIR"):
        return Path(os.environ["ODVLA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "odvla"


@functools.lru_cache(maxsize=2)
def _qwen25_json(ranks_path: str) -> str:
    """tokenizer.json text of Qwen2.5's tokenizer; built once (~3 s) and kept in :func:`cache_dir` under the ranks
    file's sha256 (an unwritable cache only costs the rebuild)."""
    data = Path(ranks_path).read_bytes()
    key = hashlib.sha256(data + _QWEN25_BUILD_VERSION.encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / f"qwen2.5-{key}.json"
    if cached.is_file():
        try:
            text = cached.read_text()
            json.loads(text)
            return text
        except (OSError, ValueError):
            pass  # a truncated or unreadable cache entry is rebuilt below
    backend = bpe_from_ranks(read_bpe_ranks(ranks_path))
    if backend.get_vocab_size() != QWEN25_BASE_VOCAB:
        raise TokenizerSourceError(f"{ranks_path}: {backend.get_vocab_size()} tokens, Qwen2.5 has {QWEN25_BASE_VOCAB}")
    backend.add_tokens([AddedToken(t, special=sp, normalized=False) for t, sp in QWEN25_ADDED_TOKENS])
    text = backend.to_str()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cached.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, cached)
    except OSError:
        pass
    return text


def qwen25_tokenizer(ranks_path=None) -> PreTrainedTokenizerFast:
    """Qwen2.5's tokenizer built offline (see module docstring): eos ``<|im_end|>``, pad ``<|endoftext|>``,
    ChatML template, left padding. ``ranks_path``: a tiktoken ranks file (default: :func:`qwen25_ranks_path`)."""
    path = str(ranks_path or qwen25_ranks_path())
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_qwen25_json(path)), bos_token=None,
                                  eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None,
                                  additional_special_tokens=[t for t, sp in QWEN25_ADDED_TOKENS if sp][3:],
                                  chat_template=QWEN25_CHAT_TEMPLATE, model_max_length=131072,
                                  padding_side="left", clean_up_tokenization_spaces=False)
    for i, (t, _) in enumerate(QWEN25_ADDED_TOKENS):
        if tok.convert_tokens_to_ids(t) != QWEN25_BASE_VOCAB + i:
            raise TokenizerSourceError(f"{path}: {t} got id {tok.convert_tokens_to_ids(t)}, Qwen2.5 has "
                                       f"{QWEN25_BASE_VOCAB + i}")
    return tok


def load_tokenizer_folder(path: str):
    """The tokenizer of a local Qwen2 (Qwen2.5-Instruct) folder ``model.llm.path``; anything else is an error
    naming the key and the path."""
    folder = Path(path)
    cfg_file = folder / "config.json"
    if not folder.is_dir():
        raise TokenizerSourceError(f"model.llm.path {path!r} is not a directory")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise TokenizerSourceError(f"model.llm.path {path!r}: cannot read {cfg_file.name} ({e})") from e
    if model_type != "qwen2":
        raise TokenizerSourceError(f"model.llm.path {path!r} is not a Qwen2 folder: {cfg_file.name} has "
                                   f"model_type {model_type!r}, expected 'qwen2' (Qwen2 / Qwen2.5)")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises OSError / ValueError / others for a folder without a tokenizer
        raise TokenizerSourceError(f"model.llm.path {path!r}: no usable tokenizer ({type(e).__name__}: {e})") from e
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = ENDOFTEXT
    tok.padding_side = "left"
    return tok


def add_model_tokens(tokenizer, text_cfg) -> int:
    """Add :func:`model_tokens` (idempotent); returns the number of tokens added."""
    return tokenizer.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False, lstrip=False,
                                            rstrip=False) for t in model_tokens(text_cfg)])


TOKENIZERS = ("bpe", "qwen2.5")


def base_tokenizer(llm_cfg, text_cfg) -> PreTrainedTokenizerFast:
    """The vocabulary before the model's tokens: ``llm.path``'s tokenizer, Qwen2.5's (``llm.tokenizer:
    qwen2.5``) or the offline BPE (``bpe``)."""
    if llm_cfg.path:
        return load_tokenizer_folder(llm_cfg.path)
    kind = getattr(llm_cfg, "tokenizer", "bpe")
    if kind == "qwen2.5":
        return qwen25_tokenizer()
    if kind != "bpe":
        raise ValueError(f"model.llm.tokenizer must be one of {TOKENIZERS}, got {kind!r}")
    t = text_cfg
    return train_offline_bpe(llm_cfg.tokenizer_vocab_size, t.traj_decimals, t.traj_encoding, t.compact_tokens)


def build_tokenizer(model_cfg) -> PreTrainedTokenizerFast:
    """Tokenizer for ``model_cfg`` (``ModelConfig``): :func:`base_tokenizer` plus the model's tokens; left padding
    (batched generation); eos = ``<|im_end|>``, pad = ``<|endoftext|>``.

    The base vocabulary must fit ``model.llm.vocab_size`` when that is set (the model's added tokens may grow the
    embedding; ids of the base vocabulary never move)."""
    tok = base_tokenizer(model_cfg.llm, model_cfg.text)
    source = model_cfg.llm.path or f"the {getattr(model_cfg.llm, 'tokenizer', 'bpe')} tokenizer"
    rows = int(model_cfg.llm.vocab_size or 0)
    if rows and not model_cfg.llm.path and len(tok) > rows:
        raise ValueError(f"model.llm.vocab_size {rows} is smaller than {source} ({len(tok)} ids, highest "
                         f"{len(tok) - 1}): its ids do not fit the model's embedding")
    add_model_tokens(tok, model_cfg.text)
    for t in (IM_START, IM_END, ENDOFTEXT):
        if tok.convert_tokens_to_ids(t) is None or tok.convert_tokens_to_ids(t) == tok.unk_token_id:
            raise ValueError(f"tokenizer of {source} lacks the chat token {t}")
    return tok
