"""Prompt banks: the style prompts a universal model is trained over (one prompt per line).

A bank is a UTF-8 text file; the package ships one (``data/prompt_bank.txt``, a few hundred prompts
written for this project) and users can write their own in the same format::

    # a comment: lines starting with "#" and blank lines are ignored
    [medium]
    an oil painting with thick brushstrokes
    a loose watercolor painting | weight=2
    a linocut print | tags=print,black-white

``[medium]`` starts a section: the prompts below it get the tag ``medium``; the watercolor is drawn
twice as often as a weight-1 prompt; the linocut has the tags ``medium``, ``print`` and ``black-white``.
A "#" only starts a comment at the beginning of a line (elsewhere it is part of the prompt).
Fields after the prompt are separated by `` | ``: ``weight=`` (a number > 0, default 1) and
``tags=`` (comma-separated names of letters, digits, ``-`` and ``_``). A prompt may appear only
once (case and spacing do not count). Every mistake raises :class:`PromptBankError` naming the file,
the line and the fix; nothing is silently dropped.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

SHIPPED_BANK = Path(__file__).resolve().parent / "data" / "prompt_bank.txt"
_TAG = re.compile(r"^[A-Za-z0-9_-]+$")
_SECTION = re.compile(r"^\[(.*)\]$")
FIELDS = ("weight", "tags")


class PromptBankError(ValueError):
    """A prompt bank that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class BankPrompt:
    """One prompt of a bank: its text, its sampling weight (> 0), its tags and where it was written."""

    text: str
    weight: float = 1.0
    tags: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class PromptBank:
    """An ordered, duplicate-free list of prompts with weights and tags (see the module docstring)."""

    prompts: tuple[BankPrompt, ...]
    source: str = "<bank>"

    def __post_init__(self):
        if not self.prompts:
            raise PromptBankError(f"{self.source}: the prompt bank has no prompts; write one style prompt per line "
                                  "(lines starting with # are comments)")
        seen: dict[str, BankPrompt] = {}
        for p in self.prompts:
            key = _key(p.text)
            if key in seen:
                raise PromptBankError(f"{self.source}: line {p.line}: prompt {p.text!r} repeats line "
                                      f"{seen[key].line}; keep one of them (raise its weight= to draw it more often)")
            seen[key] = p

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def weights(self) -> list[float]:
        return [p.weight for p in self.prompts]

    @property
    def tags(self) -> list[str]:
        """Every tag used, sorted."""
        return sorted({t for p in self.prompts for t in p.tags})

    def with_tags(self, tags: Iterable[str] | str) -> PromptBank:
        """The prompts carrying at least one of ``tags`` (names, or one comma-separated string as ``--tags`` takes);
        an error lists the tags there are when none match."""
        tags = tags.split(",") if isinstance(tags, str) else tags  # not the string's letters
        wanted = {t.strip() for t in tags if t.strip()}
        unknown = sorted(wanted - set(self.tags))
        if unknown:
            raise PromptBankError(f"{self.source}: no prompt has the tag(s) {', '.join(unknown)}; "
                                  f"tags in this bank: {', '.join(self.tags) or '(none)'}")
        source = f"{self.source} (tags {','.join(sorted(wanted))})"  # errors then say the selection is not the file
        return PromptBank(tuple(p for p in self.prompts if wanted & set(p.tags)), source)

    def without(self, texts: Iterable[str] | str) -> PromptBank:
        """The bank minus ``texts`` (e.g. prompts held out for evaluation; one prompt may be a string); unknown texts
        are an error."""
        texts = [texts] if isinstance(texts, str) else list(texts)  # not the string's letters
        drop = {_key(t) for t in texts}
        have = {_key(p.text) for p in self.prompts}
        missing = [t for t in texts if _key(t) not in have]
        if missing:
            raise PromptBankError(f"{self.source}: cannot hold out {missing}: not among its prompts (check the "
                                  "spelling and --tags)")
        kept = tuple(p for p in self.prompts if _key(p.text) not in drop)
        if not kept:
            raise PromptBankError(f"{self.source}: holding out {len(drop)} prompt(s) leaves none of the bank's "
                                  f"{len(self)} to train on; hold out fewer, or add prompts to the bank")
        return PromptBank(kept, self.source)

    def to_text(self) -> str:
        """The bank in its file format (tags written per line, no sections); parses back to the same bank."""
        lines = []
        for p in self.prompts:
            fields = ([f"weight={p.weight:g}"] if p.weight != 1.0 else []) + \
                     ([f"tags={','.join(p.tags)}"] if p.tags else [])
            lines.append(" | ".join([p.text] + fields))
        return "\n".join(lines) + "\n"


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _weight(value: str, where: str) -> float:
    try:
        w = float(value)
    except ValueError:
        raise PromptBankError(f"{where}: weight={value!r} is not a number; write e.g. weight=2") from None
    if not math.isfinite(w) or w <= 0:
        raise PromptBankError(f"{where}: weight={value} must be a finite number > 0 (a prompt you do not want: "
                              "delete the line or comment it out with #)")
    return w


def _tags(value: str, where: str) -> tuple[str, ...]:
    tags = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in tags if not _TAG.match(t)]
    if bad or not tags:
        raise PromptBankError(f"{where}: tags={value!r}: tags are comma-separated names of letters, digits, '-' "
                              "and '_', e.g. tags=medium,ink")
    return tags


def parse_prompt_bank(text: str, source: str = "<string>") -> PromptBank:
    """Parse a bank's text (the format of the module docstring)."""
    prompts: list[BankPrompt] = []
    section: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{source}: line {number}"
        if not line or line.startswith("#"):
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group(1).strip()
            section = _tags(name, where) if name else ()
            if len(section) > 1:
                raise PromptBankError(f"{where}: a section header names one tag, e.g. [medium]; got [{name}]")
            continue
        parts = [part.strip() for part in line.split(" | ")]
        prompt = " ".join(parts[0].split())
        if not prompt or prompt.startswith("|"):
            raise PromptBankError(f"{where}: the line has fields but no prompt before the first ' | '")
        if "|" in prompt:
            raise PromptBankError(f"{where}: fields are separated by ' | ' (a space on each side), e.g. "
                                  f"'{prompt.split('|')[0].strip()} | weight=2'")
        weight, tags = 1.0, section
        given = set()
        for field in parts[1:]:
            name, eq, value = field.partition("=")
            name = name.strip().lower()
            if not eq or name not in FIELDS:
                raise PromptBankError(f"{where}: unknown field {field!r}; the fields are weight=NUMBER and "
                                      "tags=a,b")
            if name in given:
                raise PromptBankError(f"{where}: {name}= is given twice")
            given.add(name)
            if name == "weight":
                weight = _weight(value.strip(), where)
            else:
                tags = tuple(dict.fromkeys(section + _tags(value, where)))
        prompts.append(BankPrompt(prompt, weight, tags, number))
    return PromptBank(tuple(prompts), source)


def load_prompt_bank(path: str | Path | None = None, tags: Sequence[str] | str | None = None) -> PromptBank:
    """A bank from ``path`` (the shipped bank when None), optionally only the prompts with one of ``tags``."""
    path = Path(path) if path is not None else SHIPPED_BANK
    if path.is_dir():
        raise PromptBankError(f"{path} is a folder; give the prompt bank's text file (one prompt per line)")
    if not path.is_file():
        raise FileNotFoundError(f"prompt bank not found: {path} (a UTF-8 text file, one style prompt per line; "
                                f"leave it out to use the shipped bank of {_count_shipped()} prompts)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptBankError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the bank as UTF-8")\
            from None
    bank = parse_prompt_bank(text, source=str(path))
    return bank.with_tags(tags) if tags else bank


def _count_shipped() -> int:
    try:
        return len(parse_prompt_bank(SHIPPED_BANK.read_text(encoding="utf-8"), str(SHIPPED_BANK)))
    except (OSError, PromptBankError):
        return 0
