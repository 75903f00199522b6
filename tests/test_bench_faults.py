"""``odvla bench faults`` without a cluster: the table of figures, the fault names it knows, and the sweep's trial
driver resources (``sweep.trial_resources``) that place trials on chosen nodes. The faults themselves run in the
node-loss tests (tests/test_node_loss_*.py), which print the same figures."""
from __future__ import annotations

import math

import pytest

from odvla.platform.bench.bench_faults import COLUMNS, FaultFigure, fault_table, table_rows


def test_table_has_one_row_per_fault_and_dashes_where_a_column_does_not_apply():
    figures = [FaultFigure("train worker loss", 12.34, 0, note="restarts 1"),
               FaultFigure("serve node loss (3 clients)", 0.5, None, 2, 40),
               FaultFigure("train node loss", math.nan, None, note="run failed")]
    rows = table_rows(figures)
    assert rows == [("train worker loss", "12.3", "0", "-", "restarts 1"),
                    ("serve node loss (3 clients)", "0.5", "-", "2 / 40", ""),
                    ("train node loss", "did not recover", "-", "-", "run failed")]
    table = fault_table(figures)
    # the printed table: a header of the five columns, figures right-aligned between left-aligned names and notes,
    # one line per fault with its cells in column order
    assert [c.justify for c in table.columns] == ["left", "right", "right", "right", "left"]
    from rich.console import Console

    console = Console(record=True, width=160, color_system=None)
    console.print(table)
    text = console.export_text()
    head = next(line for line in text.splitlines() if "fault" in line and "note" in line)
    assert [head.index(c) for c in COLUMNS] == sorted(head.index(c) for c in COLUMNS)
    for row in rows:
        line = next(x for x in text.splitlines() if row[0] in x)
        cells = [c for c in row if c]
        assert [line.index(c) for c in cells] == sorted(line.index(c) for c in cells), line


def test_cli_names_an_unknown_fault_and_lists_the_known_ones(capsys):
    from odvla.platform.cli.main import main

    assert main(["bench", "faults", "--faults", "worker,meteor"]) == 2
    msg = capsys.readouterr().err
    assert "unknown fault(s) ['meteor']" in msg
    assert "worker" in msg and "node" in msg and "serve" in msg  # serve comes from the odvla.faults entry point


def test_trial_driver_resources_take_sweep_trial_resources_and_name_a_bad_key():
    from odvla.platform.config import ConfigError, load_config
    from odvla.tune.sweep import trial_driver_resources

    cfg = load_config(model="tiny", overrides=["sweep.trial_resources.on_demand=1"])
    assert trial_driver_resources(cfg.sweep) == {"cpu": 1, "on_demand": 1.0}
    assert trial_driver_resources(load_config(model="tiny").sweep) == {"cpu": 1}
    for bad in ("0", "lots"):
        cfg = load_config(model="tiny", overrides=[f"sweep.trial_resources.on_demand={bad}"])
        with pytest.raises(ConfigError, match="sweep.trial_resources.on_demand"):
            trial_driver_resources(cfg.sweep)
