"""The signals that stop a command or a training run, handled for a while and then given back: one home for how a
handler is installed (the CLI's, for every command, and a training run's StopRequest), light enough for any command."""
from __future__ import annotations

import signal
from typing import Callable

# what asks a training run to stop after its step and keep it: Ctrl-C, torchrun's or `kill`'s SIGTERM, and SIGHUP
# (the terminal closed, an SSH session dropped) where the platform has it (not Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def install(signals: tuple[int, ...], handler: Callable) -> dict[int, object]:
    """``handler`` for each of ``signals``; returns the handlers it replaced, for :func:`restore`. A signal ignored
    at start stays ignored (``nohup``, a background job's SIGINT, a service manager's choice: the caller asked that
    it not stop the run, as Python itself leaves an ignored SIGINT alone); a handler installed outside Python (by a
    host program embedding it) is kept, since it could not be given back; and outside the main thread (e.g. inside a
    server) nothing is installed: the host's handling stays."""
    previous = {}
    for sig in signals:
        current = signal.getsignal(sig)
        if current == signal.SIG_IGN or current is None:
            continue
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def restore(previous: dict[int, object]) -> None:
    """Give back the handlers :func:`install` replaced."""
    for sig, old in previous.items():
        signal.signal(sig, old)
