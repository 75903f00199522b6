"""Published nuScenes open-loop planning numbers, printed beside measured ones (never measured here).

Source: OpenDriveVLA (Zhou et al., arXiv 2503.23463, Table I "Open-Loop planning performance comparison"), which
collects the other methods' numbers from their papers. Two column families, as in that table:

* ``stp3``: "ST-P3 metrics" — mean over the steps up to each horizon. For the OpenDriveVLA rows this is the
  ``odvla`` protocol here (its evaluation code: UniAD's vehicle-only occupancy, ST-P3 averaging).
* ``uniad``: "UniAD metrics" — value at the horizon step (``uniad`` protocol here).

Values: L2 in metres at 1 s, 2 s, 3 s, average; collision rate in percent at 1 s, 2 s, 3 s, average. ``None``: not
reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SOURCE = "OpenDriveVLA (arXiv 2503.23463) Table I"


@dataclass(frozen=True)
class PublishedRow:
    method: str
    family: str  # 'stp3' | 'uniad'
    l2: tuple  # (1s, 2s, 3s, avg) metres
    col: Optional[tuple]  # (1s, 2s, 3s, avg) percent, None when not reported
    note: str = ""


_STP3 = {
    "UniAD": ((0.44, 0.67, 0.96, 0.69), (0.04, 0.08, 0.23, 0.12)),
    "VAD": ((0.17, 0.34, 0.60, 0.37), (0.07, 0.10, 0.24, 0.14)),
    "DriveVLM": ((0.18, 0.34, 0.68, 0.40), (0.10, 0.22, 0.45, 0.27)),
    "GPT-Driver": ((0.20, 0.40, 0.70, 0.44), (0.04, 0.12, 0.36, 0.17)),
    "OmniDrive": ((0.14, 0.29, 0.55, 0.33), (0.00, 0.13, 0.78, 0.30)),
    "EMMA": ((0.14, 0.29, 0.54, 0.32), None),
    "OpenDriveVLA-0.5B": ((0.15, 0.32, 0.57, 0.35), (0.01, 0.06, 0.20, 0.09)),
    "OpenDriveVLA-3B": ((0.14, 0.30, 0.55, 0.33), (0.02, 0.07, 0.22, 0.10)),
    "OpenDriveVLA-7B": ((0.15, 0.31, 0.55, 0.33), (0.01, 0.08, 0.21, 0.10)),
}
_UNIAD = {
    "UniAD": ((0.48, 0.96, 1.65, 1.03), (0.05, 0.17, 0.71, 0.31)),
    "GPT-Driver": ((0.27, 0.74, 1.52, 0.84), (0.07, 0.15, 1.10, 0.44)),
    "OpenDriveVLA-0.5B": ((0.21, 0.60, 1.22, 0.68), (0.00, 0.15, 0.63, 0.26)),
    "OpenDriveVLA-3B": ((0.19, 0.58, 1.24, 0.67), (0.02, 0.18, 0.70, 0.30)),
    "OpenDriveVLA-7B": ((0.20, 0.58, 1.21, 0.66), (0.00, 0.22, 0.55, 0.25)),
}

PUBLISHED = tuple(PublishedRow(m, "stp3", l2, col) for m, (l2, col) in _STP3.items()) + tuple(
    PublishedRow(m, "uniad", l2, col) for m, (l2, col) in _UNIAD.items())
"""DriveVLM, OmniDrive and EMMA publish only the ST-P3-style columns; VAD's row is its ST-P3 evaluation."""


def published(family: str) -> list[PublishedRow]:
    return [r for r in PUBLISHED if r.family == family]
