"""The package docstring is the one map of notify_server/: it names every module.

Each entry is one line of that docstring: a path relative to notify_server/
(`delivery/hub.py`, or `delivery/` for a subpackage), then its job.
"""

import ast
import re
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "notify_server"
MAP = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""

ENTRY = re.compile(r"^(?P<path>[a-z_][a-z0-9_]*(?:/[a-z_][a-z0-9_]*)*(?:\.py|/))\s+\S")


def entries(text: str) -> List[str]:
    """The paths the map's lines name, in order."""
    return [match["path"] for match in map(ENTRY.match, text.splitlines()) if match]


def modules() -> set:
    """Every module file (but __init__.py) and subpackage under notify_server/."""
    files = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
             if path.name != "__init__.py"}
    packages = {path.parent.relative_to(PACKAGE).as_posix() + "/"
                for path in PACKAGE.rglob("__init__.py") if path.parent != PACKAGE}
    return files | packages


def test_entries_are_lines_starting_with_a_module_or_package_path():
    text = ("Prose naming delivery/hub.py in passing is no entry.\n"
            "delivery/                 fan-out\n"
            "delivery/hub.py           the sessions\n"
            "config.py                 configs\n"
            "queue/notes.txt           not a module\n"
            "server.py\n")
    assert entries(text) == ["delivery/", "delivery/hub.py", "config.py"]


def test_the_map_names_every_module_and_subpackage():
    missing = sorted(modules() - set(entries(MAP)))
    assert not missing, ("notify_server/__init__.py's map lacks a line for each of these "
                         "(path, then its job):\n" + "\n".join(missing))


def test_the_map_names_only_what_exists():
    gone = [entry for entry in entries(MAP) if not (PACKAGE / entry).exists()
            or (entry.endswith(".py") and not (PACKAGE / entry).is_file())]
    assert not gone, ("notify_server/__init__.py's map names what does not exist: "
                      + ", ".join(gone))


def test_the_map_names_each_part_once():
    named = entries(MAP)
    assert sorted({entry for entry in named if named.count(entry) > 1}) == []
