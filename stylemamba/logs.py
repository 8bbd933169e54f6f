"""One log prefix for every StyleMamba message, and quiet third-party warnings that tell users nothing.

Every module logs to the ``stylemamba`` logger without a prefix of its own; :class:`OnePrefix`
puts exactly one in front (``stylemamba:`` on the command line, ``StyleMamba:`` in ComfyUI,
whose console prints bare messages) and drops any prefix a message already carries.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings

LOGGER = "stylemamba"
_OLD_PREFIX = re.compile(r"^\s*(?:\[?stylemamba\]?:?\s+)+", re.IGNORECASE)

# Warnings raised inside the libraries we call that are about their internals or future versions,
# not about anything a StyleMamba user can change. (module regex, message regex)
QUIET_WARNINGS = (
    (r"(transformers|diffusers|huggingface_hub|torchvision|lpips|timm)(\.|$)", r".*deprecat.*"),
    (r"(transformers|diffusers|huggingface_hub|torchvision|lpips)(\.|$)", r".*will be removed.*"),
    (r"torchvision(\.|$)", r".*(pretrained|weights).*"),
    (r"torch\.utils\.checkpoint", r".*use_reentrant.*"),
    (r"torch(\.|$)", r".*TypedStorage is deprecated.*"),
)


class OnePrefix(logging.Filter):
    """Rewrites each record of the ``stylemamba`` logger to start with ``prefix`` (once)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_stylemamba_prefixed", False):
            message = _OLD_PREFIX.sub("", str(record.msg))
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            record.msg = f"{self.prefix} {message}"
            record._stylemamba_prefixed = True
        return True


def install_prefix(prefix: str) -> None:
    """Put :class:`OnePrefix` on the ``stylemamba`` logger (replacing one installed before)."""
    logger = logging.getLogger(LOGGER)
    for f in [f for f in logger.filters if isinstance(f, OnePrefix)]:
        logger.removeFilter(f)
    logger.addFilter(OnePrefix(prefix))


def quiet_third_party_warnings() -> None:
    """Hide the third-party warnings listed in :data:`QUIET_WARNINGS`, and the advice and progress bars
    diffusers / transformers / huggingface_hub print while loading (``pip install accelerate``, token-id
    checks of a config, "Loading weights" bars). Their errors still show; a model whose weights do not
    fit is an error of ours (encoders, vae). Environment variables the user set win.
    """
    for module, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def setup_cli_logging(verbose: bool = False) -> None:
    """Command line: ``stylemamba: message`` (``stylemamba: warning: ...``) on stderr."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    logging.getLogger(LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
    install_prefix("stylemamba:")
    if not verbose:
        quiet_third_party_warnings()


class DropTopics(logging.Filter):
    """Drops the records logged with ``extra={"topic": t}`` for a ``t`` in ``topics``."""

    def __init__(self, topics):
        super().__init__()
        self.topics = frozenset(topics)

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "topic", None) not in self.topics


@contextlib.contextmanager
def said_already(*topics: str):
    """While a front end runs the library: drop the library's warnings on ``topics`` (e.g. "lpips loss skipped"),
    which the front end gave in its own words, naming its flags; the same warning twice reads as two problems."""
    logger, drop = logging.getLogger(LOGGER), DropTopics(topics)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


_CALLER_KEEPS: list[str] = []


@contextlib.contextmanager
def stopping_keeps(words: str):
    """What stopping on Ctrl-C keeps, in the line every StopRequest inside prints instead of its own words: a command
    that trains only to measure (demo, check, eval, bench) drops the style a stopped ``train_style`` keeps."""
    _CALLER_KEEPS.append(words)
    try:
        yield
    finally:
        _CALLER_KEEPS.pop()


def stopping_keeps_said(own: str) -> str:
    """The words of the outermost :func:`stopping_keeps`, else ``own``."""
    return _CALLER_KEEPS[0] if _CALLER_KEEPS else own


@contextlib.contextmanager
def quiet_loading():
    """While loading a model: transformers' and diffusers' warnings and progress bars off, then restored; and
    huggingface_hub's warning about an argument diffusers passes it (``local_dir_use_symlinks``).

    Used inside ComfyUI too, where the process-wide settings are not ours to change for good. Safe because
    the loaders check for missing weights themselves (an error, not a warning).
    """
    saved = []
    for name in ("transformers", "diffusers"):
        try:
            lib = __import__(f"{name}.utils.logging", fromlist=["get_verbosity"])
        except ImportError:
            continue
        bars = getattr(lib, "is_progress_bar_enabled", lambda: None)()
        saved.append((lib, lib.get_verbosity(), bars))
        lib.set_verbosity_error()
        if bars:
            lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # an argument diffusers passes, deprecated by huggingface_hub: not the user's
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


class OutlivesItsTerminal:
    """The command line's stderr, which a lost terminal cannot turn into an exception: after SIGHUP (the terminal
    closed, an SSH session dropped) a write fails (EIO, a broken pipe), and a progress line or a log line must not
    stop a training run from saving what it trained. At the first failure its descriptor is pointed at os.devnull,
    so that later writes (tqdm's, a C library's) and Python's last flush at exit succeed too."""

    def __init__(self, stream):
        self._stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(devnull, self._stream.fileno())
            self._stream.flush()  # the text that could not be written goes, so that no flush fails again
        except (OSError, ValueError):  # no descriptor (a test's stream), or closed
            pass
        finally:
            os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def stderr_outliving_the_terminal():
    """While a command runs, ``sys.stderr`` is :class:`OutlivesItsTerminal`; the stream before is put back after."""
    previous = sys.stderr
    sys.stderr = OutlivesItsTerminal(previous)
    try:
        yield
    finally:
        sys.stderr = previous
