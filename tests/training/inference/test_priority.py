"""Requests first: a background thread's encoder pauses at block boundaries while a request runs."""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

from training.inference.priority import RequestsFirst


class _Blocks(nn.Module):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(count))
        self.ran: list[int] = []
        for index, block in enumerate(self.blocks):
            block.register_forward_hook(lambda *_, index=index: self.ran.append(index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _in_background(priority: RequestsFirst, model: nn.Module) -> threading.Thread:
    def run() -> None:
        with priority.background():
            model(torch.zeros(1))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_background_work_waits_at_a_block_while_a_request_runs():
    priority, model = RequestsFirst(), _Blocks(4)
    hooks = priority.add_pause_points(model)
    assert len(hooks) == 4
    with priority.request():
        thread = _in_background(priority, model)
        time.sleep(0.3)
        assert model.ran == [] and thread.is_alive()  # held before its first block
        assert priority.pauses == 1
    thread.join(timeout=5)
    assert model.ran == [0, 1, 2, 3] and not thread.is_alive()


def test_requests_and_unmarked_threads_never_wait():
    priority, model = RequestsFirst(), _Blocks(3)
    priority.add_pause_points(model)
    with priority.request():
        model(torch.zeros(1))  # the request's own encoding (this thread is not background)
    assert model.ran == [0, 1, 2] and priority.pauses == 0


def test_background_work_runs_straight_through_without_requests():
    priority, model = RequestsFirst(), _Blocks(3)
    priority.add_pause_points(model)
    _in_background(priority, model).join(timeout=5)
    assert model.ran == [0, 1, 2] and priority.pauses == 0
