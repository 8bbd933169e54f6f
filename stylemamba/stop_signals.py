"""The signals that stop a command or a training run, handled for a while and then given back: one home for how a
handler is installed (the CLI's, for every command, and a training run's StopRequest), light enough for any command."""
from __future__ import annotations

import signal
from typing import Callable

# what asks a training run to stop after its step and keep it: Ctrl-C, torchrun's or `kill`'s SIGTERM, and SIGHUP
# (the terminal closed, an SSH session dropped) where the platform has it (not Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def install(signals: tuple[int, ...], handler: Callable) -> dict[int, object]:
    """``handler`` for each of ``signals``; returns the handlers it replaced, for :func:`restore`. A SIGHUP ignored
    at start stays ignored (``nohup`` or a service manager asked that closing the terminal not stop the run), and
    outside the main thread (e.g. inside a server) nothing is installed: the host's handling stays."""
    previous = {}
    for sig in signals:
        if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
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
