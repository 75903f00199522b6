"""Named ranges for ``torch.profiler``: where a step's time goes (``odvla bench train --profile``).

``scope(name)`` is ``torch.profiler.record_function("odvla::" + name)``: a no-op unless a profiler is recording
(a few microseconds per call). The platform's step profile (``odvla.platform.train.step_profile``) sums the
forward operators inside each range and attributes their backward operators to the same range by autograd
sequence number, so every part gets its forward and backward time.
"""
from __future__ import annotations

import torch

PREFIX = "odvla::"


def scope(name: str) -> torch.profiler.record_function:
    """A profiler range named ``odvla::<name>`` (use as a context manager)."""
    return torch.profiler.record_function(PREFIX + name)
