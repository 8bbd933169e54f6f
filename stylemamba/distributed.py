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

import datetime
import logging
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist

log = logging.getLogger("stylemamba")

# what asks a training run to stop after its step and keep it: Ctrl-C, torchrun's or `kill`'s SIGTERM, and SIGHUP
# (the terminal closed, an SSH session dropped) where the platform has it (not Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "" when no process group was opened (a single process)

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

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (small JSON-able values only: it goes through pickle between OUR ranks)."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: str | torch.device = "auto", backend: str | None = None, timeout_s: float = 1800) -> Dist:
    """Join the job torchrun started (or be a world of one). ``device``: "auto", "cpu", "cuda".

    Under torchrun with CUDA, rank ``r`` computes on ``cuda:LOCAL_RANK``; ``backend`` defaults to NCCL for
    CUDA and gloo for the CPU. A process group that is already open (e.g. a test's) is reused.
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
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                 **({"device_id": dev} if dev.type == "cuda" else {}))
        log.info("distributed: rank %d/%d on %s (%s)", rank, world, dev, backend)
        return Dist(rank, world, local, dev, backend)
    return Dist(rank, world, local, dev)


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
        self.announce = announce
        self.keeps = keeps
        self.signals = signals
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True
        outer = getattr(self._previous.get(signum), "__self__", None)
        while isinstance(outer, StopRequest):  # nested (train_universal in a caller's StopRequest): the caller
            outer.asked = True  # stops too, as the one Ctrl-C asked, instead of going on to its next run
            outer = getattr(outer._previous.get(signum), "__self__", None)
        if self.announce:
            _tell(f"\n{signal.Signals(signum).name}: stopping after this step and {self.keeps} "
                  "(Ctrl-C again to abort without it)...")

    def __enter__(self) -> StopRequest:
        for sig in self.signals:
            if _ignored_hangup(sig):
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. inside a server): no signal handling
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)


def _ignored_hangup(sig: int) -> bool:
    """SIGHUP ignored when we start: ``nohup`` (or a service manager) asked that closing the terminal not stop the
    run, so it stays ignored rather than becoming a stop."""
    return sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN


def _tell(text: str) -> None:
    """Print to stderr, or nothing when it cannot: after SIGHUP the terminal is gone (EIO, a broken pipe), and a
    signal that lands in the middle of another print makes this one reentrant. Either must not stop the save."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, RuntimeError):
        pass
