"""Deterministic template choice: one random stream per (seed, sample token, generator), so a sample's text does
not change when other samples are added, removed or reordered."""
from __future__ import annotations

import zlib

import numpy as np


def sample_rng(seed: int, sample_token: str, salt: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(sample_token.encode()), zlib.crc32(salt.encode())])


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]
