"""``odvla bench data`` end to end on a small synthetic dataroot: both sides build every sample of the split, and
each pass over the split on the one Ray cluster reports its own pace."""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration


def test_bench_data_reports_every_pass_and_counts_every_sample(capsys):
    from odvla.platform.cli.main import main

    assert main(["bench", "data", "--scenes", "2", "--keyframes", "6", "--epochs", "2", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    head = re.search(r"data bench: (\d+) samples of 'train'", out)
    assert head, out
    n = int(head.group(1))
    e2e = re.search(r"ray data pipeline \(end to end, incl\. start\)\s+(\d+)", out)
    assert e2e and int(e2e.group(1)) == 2 * n, out  # two passes, every sample each time
    paces = [float(x) for x in re.findall(r"ray data pipeline \(pass \d, after first batch\)\s+([\d.]+)", out)]
    assert len(paces) == 2 and all(p > 0 for p in paces), out
    ratio = re.search(r"ratio ray/devkit: [\d.]+x end to end, [\d.]+x in pass 1, [\d.]+x in pass 2", out)
    assert ratio, out
