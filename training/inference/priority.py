"""Requests first: background encoding pauses at block boundaries while a request runs.

Two threads running torch ops at once share the same cores and slow each other down. So background work
(encoding a project's images before anyone opens them) runs the encoder with pause points: a forward
pre-hook on each encoder block waits while any foreground request is in flight. A request that
arrives mid-encoding then waits at most for the block being computed, not for the whole image.
Hooks only ever pause the thread marked as background; a request's own encoding never waits.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["RequestsFirst", "lower_this_threads_priority"]


def lower_this_threads_priority(niceness: int) -> None:
    """Give the calling thread ``niceness`` (Linux niceness is per thread; elsewhere nothing happens).

    For background threads of a process that also answers requests: the kernel then prefers the requests'
    threads, and other processes of higher priority (a training job), whenever the cores are busy.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class RequestsFirst:
    """Counts foreground requests in flight and holds background threads at pause points meanwhile."""

    def __init__(self) -> None:
        self._active = 0
        self._idle = threading.Condition()
        self._local = threading.local()
        self.pauses = 0  # times a background thread waited for a request (tests, logs)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Foreground work: background threads stop at their next pause point until it ends."""
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                if not self._active:
                    self._idle.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Mark the calling thread as background: pause points in it wait for requests."""
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = False

    def pause_point(self) -> None:
        """In a background thread, wait until no request is in flight; elsewhere return at once."""
        if not getattr(self._local, "background", False):
            return
        with self._idle:
            if self._active:
                self.pauses += 1
            self._idle.wait_for(lambda: self._active == 0)

    def add_pause_points(self, encoder: nn.Module) -> list:
        """Put a pause point before every block of ``encoder`` (every element of its ModuleLists:
        TinyViT's layers and their blocks, ViT's blocks); returns the hook handles."""
        def hook(module: nn.Module, args: tuple) -> None:
            self.pause_point()

        blocks = [child for module in encoder.modules() if isinstance(module, nn.ModuleList) for child in module]
        return [block.register_forward_pre_hook(hook) for block in blocks]
