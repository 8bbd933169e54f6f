"""torch.distributed for training jobs: one process per GPU under ``torchrun``, or a plain single process.

Why this module: the universal trainer should read the same whether it runs as ``python -m stylemamba
train-universal`` on one device or as ``torchrun --nproc_per_node=8 ...`` on many nodes. :func:`setup`
reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``),
opens the process group (NCCL for CUDA, gloo for the CPU) and pins each process to its GPU; without
torchrun it returns a world of one and opens nothing. The collectives below are no-ops in a world of
one, so callers never branch on it.

Ctrl-C: :class:`StopRequest` turns SIGINT / SIGTERM (what torchrun forwards to its workers) / SIGHUP (the
terminal closed, an SSH session dropped) into a flag; the trainer asks :meth:`Dist.any` at the end of each step,
so every rank stops after the same step, writes one checkpoint and exits cleanly. A second Ctrl-C aborts at once.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .logs import stopping_keeps_said
from .stop_signals import STOP_SIGNALS, install, restore

log = logging.getLogger("stylemamba")



@dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "" when no process group was opened (a single process)
    timeout_s: float | None = None  # how long a rank waits for the others (None: a process group opened elsewhere)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and the final model."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over all ranks (a copy; ``t`` itself in a world of one)."""
        if not self.active:
            return t
        out = t.detach().clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (e.g. one rank got Ctrl-C)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.backend == "nccl" else "cpu")
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def first_message(self, message: str | None) -> str | None:
        """The message of the lowest rank that has one, on every rank (each calls it: a collective); for a rare
        event that :meth:`any` found (another rank may be the one that knows what happened)."""
        if not self.active:
            return message
        found: list[str | None] = [None] * self.world_size
        tdist.all_gather_object(found, message)
        return next((m for m in found if m is not None), None)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (small JSON-able values only: it goes through pickle between OUR ranks)."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]


TIMEOUT_VAR = "STYLEMAMBA_DIST_TIMEOUT"
# seconds a rank waits for the others: started by hand (RANK, WORLD_SIZE, MASTER_ADDR set), nobody stops the job when
# a process dies, and torch's 30 min kept the rest waiting; torchrun's agent stops every process when one dies, so
# its runs keep torch's wait, for a process that hangs
BY_HAND_TIMEOUT_S, TORCHRUN_TIMEOUT_S = 600.0, 1800.0


def launched_by_torchrun() -> bool:
    """RANK and WORLD_SIZE are set: by torchrun, or by hand (see :func:`supervised_by_torchrun`)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def supervised_by_torchrun() -> bool:
    """torchrun's agent watches this process (it stops the job when a process dies); not so when started by hand."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def wait_timeout() -> float:
    """How long a rank waits for the others: STYLEMAMBA_DIST_TIMEOUT seconds, else 10 min by hand, 30 under torchrun."""
    text = os.environ.get(TIMEOUT_VAR, "").strip()
    if not text:
        return TORCHRUN_TIMEOUT_S if supervised_by_torchrun() else BY_HAND_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_VAR}={text!r}: give the seconds a process waits for the others, e.g. 1800")
    return seconds


def setup(device: str | torch.device = "auto", backend: str | None = None, timeout_s: float | None = None) -> Dist:
    """Join the job torchrun (or the user, setting RANK, WORLD_SIZE, MASTER_ADDR/PORT) started, or be a world of
    one. ``device``: "auto", "cpu", "cuda".

    Under torchrun with CUDA, rank ``r`` computes on ``cuda:LOCAL_RANK``; ``backend`` defaults to NCCL for
    CUDA and gloo for the CPU. A process group that is already open (e.g. a test's) is reused. ``timeout_s``: how
    long a rank waits for another one before it stops with :class:`RankStopped` (default :func:`wait_timeout`).
    """
    want = str(device)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if not launched_by_torchrun() and not tdist.is_initialized():
        return Dist(device=torch.device(want))
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if want.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s): start at most "
                             "that many processes per node (torchrun --nproc_per_node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), local, dev, tdist.get_backend())
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if world > 1:
        dist = Dist(rank, world, local, dev, backend, timeout_s or wait_timeout())
        with naming_a_stopped_rank(dist, joining=True):
            tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=dist.timeout_s),
                                     **({"device_id": dev} if dev.type == "cuda" else {}))
        log.info("distributed: rank %d/%d on %s (%s); a process waits %.0f s for the others (%s)", rank, world, dev,
                 backend, dist.timeout_s, TIMEOUT_VAR)
        return dist
    return Dist(rank, world, local, dev)


class RankStopped(RuntimeError):
    """Another process of a multi-process job stopped, never joined, or did not answer in time."""


# gloo's words (a RuntimeError) when a peer is gone or silent; the store's and NCCL's errors are torch's DistError
_PEER_GONE = re.compile(r"closed by peer|reset by peer|timed out|broken pipe|connection refused", re.IGNORECASE)


def peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.distributed saying another process is gone or did not answer in time."""
    if isinstance(exc, RankStopped) or not isinstance(exc, RuntimeError):
        return False
    dist_error = getattr(tdist, "DistError", None)  # torch >= 2.1
    return (dist_error is not None and isinstance(exc, dist_error)) or bool(_PEER_GONE.search(str(exc)))


@contextlib.contextmanager
def naming_a_stopped_rank(dist: Dist, joining: bool = False):
    """Turn torch's error for a process that is gone (or silent) into :class:`RankStopped`, which says so and what
    to do; ``joining``: while the processes meet (one that failed before it got there never joins)."""
    try:
        yield
    except RuntimeError as exc:
        if not dist.active or not peer_gone(exc):
            raise
        raise RankStopped(rank_stopped_message(dist, exc, joining)) from exc


def rank_stopped_message(dist: Dist, exc: BaseException, joining: bool) -> str:
    waited = f"{dist.timeout_s:.0f} s" if dist.timeout_s else "the process group's timeout"
    what = (f"not all {dist.world_size} processes joined within {waited}" if joining else
            f"another process stopped, or did not answer within {waited}")
    words = " ".join(str(exc).split("\n")[0].split())[:200].rstrip(".")
    return (f"rank {dist.rank} of {dist.world_size}: {what} ({words}). Read the other processes' output for their "
            "error, end any still running, fix it and start all of them again (--resume continues from the last "
            f"checkpoint). A slow process (a model download): set {TIMEOUT_VAR} to the seconds to wait; torchrun "
            "stops every process when one dies")


def shutdown(dist: Dist) -> None:
    """Close the process group this job opened (call on every exit path, after the last collective)."""
    if dist.backend and tdist.is_initialized():
        tdist.destroy_process_group()


class StopRequest:
    """Context manager: SIGINT, SIGTERM and SIGHUP (:data:`STOP_SIGNALS`, unless ``signals`` says otherwise) set
    :attr:`asked` (stop after this step); a second SIGINT aborts. ``keeps`` says what stopping keeps, in the line
    printed on the first signal."""

    def __init__(self, announce: bool = True, keeps: str = "writing a checkpoint",
                 signals: tuple[int, ...] = STOP_SIGNALS):
        self.asked = False
        self.signum: int | None = None  # the first signal that asked (a command exits 128 + it)
        self.announce = announce
        self.keeps = keeps
        self.signals = signals
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True
        self.signum = self.signum or signum
        outer = getattr(self._previous.get(signum), "__self__", None)
        while isinstance(outer, StopRequest):  # nested (train_universal in a caller's StopRequest): the caller
            outer.asked = True  # stops too, as the one Ctrl-C asked, instead of going on to its next run
            outer = getattr(outer._previous.get(signum), "__self__", None)
        if self.announce:
            keeps = stopping_keeps_said(self.keeps)
            _tell(f"\n{signal.Signals(signum).name}: stopping after this step and {keeps} "
                  "(Ctrl-C again to abort without it)...")

    def __enter__(self) -> StopRequest:
        self._previous = install(self.signals, self._handler)  # none outside the main thread (e.g. in a server)
        return self

    def __exit__(self, *exc) -> None:
        restore(self._previous)


def _tell(text: str) -> None:
    """Print to stderr, or nothing when it cannot: after SIGHUP the terminal is gone (EIO, a broken pipe), and a
    signal that lands in the middle of another print makes this one reentrant. Either must not stop the save."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, RuntimeError):
        pass
