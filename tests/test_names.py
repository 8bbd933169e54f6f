"""Every name the code uses is defined. A name missing on a path the tests rarely take (the CLI's Ctrl-C branch
once called a helper that did not exist) is found here by reading the code, not by a user who loses a run."""
import ast
from pathlib import Path

import pytest

pyflakes_checker = pytest.importorskip("pyflakes.checker")
pyflakes_messages = pytest.importorskip("pyflakes.messages")

ROOT = Path(__file__).resolve().parents[1]
UNDEFINED = (pyflakes_messages.UndefinedName, pyflakes_messages.UndefinedLocal, pyflakes_messages.UndefinedExport)


def sources():
    yield ROOT / "__init__.py"
    for folder in ("stylemamba", "nodes", "tests"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def undefined_names(path: Path) -> list[str]:
    checker = pyflakes_checker.Checker(ast.parse(path.read_text(encoding="utf-8"), str(path)), str(path))
    return [f"{path.relative_to(ROOT)}:{m.lineno}: {m.message % m.message_args}"
            for m in checker.messages if isinstance(m, UNDEFINED)]


def test_no_module_uses_an_undefined_name():
    found = [line for path in sources() for line in undefined_names(path)]
    assert not found, "\n".join(found)


def test_the_check_sees_an_undefined_name(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def save(out):\n    return free_path(out)\n")
    checker = pyflakes_checker.Checker(ast.parse(broken.read_text()), str(broken))
    assert [m.message_args for m in checker.messages if isinstance(m, UNDEFINED)] == [("free_path",)]
