"""Ctrl-C during training: the loops stop at their next step boundary, save a checkpoint there,
and raise `Interrupted`; the same command then resumes from that step. A second Ctrl-C stops
at once (the updates since the last checkpoint are then lost, as with kill -9)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from o2o.logging import console


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after saving a checkpoint; the message says where."""


class StopRequest:
    """While entered (in the main thread), the first SIGINT only sets `requested`: the loop
    polls it between steps. Elsewhere (worker threads) SIGINT keeps its usual meaning."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous = signal.default_int_handler

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._handle)
            self._previous = signal.default_int_handler if previous is None else previous
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C: at once
        console.print(
            "[yellow]Ctrl-C: stopping after the current updates, with a checkpoint "
            "(Ctrl-C again stops at once, losing the updates since the last one)"
        )
