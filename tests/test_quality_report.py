"""The quality report's "clicks saved" figure, from hand-made cells (no model runs)."""

from __future__ import annotations

import pytest

from benchmarks.quality.report import clicks_saved


def _clicks(noc90: float, iou1: float, objects: int = 4) -> dict:
    return {"objects": objects, "max_clicks": 20, "noc85": noc90, "noc90": noc90, "iou_at": {"1": iou1}}


def _cell(method: str, labeled: int, repeat: int, clicks: dict | None) -> dict:
    return {"method": method, "labeled": labeled, "repeat": repeat, "clicks": clicks}


def test_clicks_saved_is_sams_noc_minus_the_gates_choice():
    cells = [
        _cell("sam", 0, 0, _clicks(10.0, 0.30)),
        _cell("decoder", 4, 0, _clicks(7.0, 0.50)),  # better: the gate chooses it, 3 clicks saved
        _cell("decoder", 4, 1, _clicks(12.0, 0.60)),  # worse: SAM keeps the clicks, nothing saved
        _cell("decoder", 8, 0, _clicks(10.0, 0.20)),  # a tie lost on IoU@1: SAM keeps them
        _cell("encoder", 4, 0, _clicks(2.0, 0.90)),  # no SAM decoder beside it: not counted
        _cell("promptless", 4, 0, None),
    ]
    saved = clicks_saved(cells)
    assert set(saved) == {"4", "8"}
    assert saved["4"]["mean"] == pytest.approx(1.5) and saved["4"]["min"] == 0.0 and saved["4"]["max"] == 3.0
    assert saved["4"]["adapter_chosen"] == 1 and saved["4"]["n"] == 2
    assert saved["8"]["mean"] == 0.0 and saved["8"]["adapter_chosen"] == 0


def test_without_sams_cell_nothing_is_claimed():
    assert clicks_saved([_cell("decoder", 4, 0, _clicks(3.0, 0.9))]) == {}
