"""Stop signals: SIGINT/SIGTERM ask a run to save and stop; DataLoader workers ignore them.

The training loop (``training/loop.py``) runs inside :class:`StopSignals`; every recipe's DataLoaders
start their workers with :func:`worker_init_fn`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Optional

log = logging.getLogger("echolancer.train")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM.

    Schedulers, ``timeout`` and Ctrl-C signal the whole process group. A worker killed by that
    signal makes the main process's next batch raise ("DataLoader worker ... killed by signal")
    before it can save; so the workers ignore it, the main process saves once and shuts them down.
    They still exit when the main process dies (PyTorch's worker watchdog).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignals:
    """SIGINT/SIGTERM ask a run to save and stop at the next safe point; a second one acts at once.

    Use as a context manager; ``requested`` turns True on the first signal (logged once).
    """

    def __init__(self, on_stop: Optional[Callable[[], None]] = None) -> None:
        self.requested = False
        self._on_stop = on_stop
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked child that inherited the handler: not ours
            return
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True
        if self._on_stop is not None:
            self._on_stop()
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts immediately

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h)

