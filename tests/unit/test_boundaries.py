"""What may import what: the pure core does no I/O, and the worker side ships alone.

Every import statement of every module under notify_server/ is read with `ast`
(those inside functions too, and relative ones resolved), never by importing
the module. `violations(module, source)` applies the rules; each rule is first
shown to catch a deliberately bad source, then the real tree is checked.
"""

import ast
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "notify_server"

# The rules, with no I/O: each of these packages must exist.
PURE_PACKAGES = ("notify_server.protocol", "notify_server.access", "notify_server.delivery",
                 "notify_server.records",
                 "notify_server.queue", "notify_server.alerts")
# Pure modules outside those packages (each must exist: the real-tree test checks).
PURE_MODULES = ("notify_server.config", "notify_server.celery_io.bridge_mapping",
                "notify_server.celery_io.bridge_rules", "notify_server.celery_io.bridge_wire",
                "notify_server.redis_io.backoff", "notify_server.celery_metrics")
IO_LIBRARIES = ("tornado", "redis", "celery", "kombu")
ADAPTERS = tuple(f"notify_server.{name}" for name in (
    "redis_io", "celery_io", "edge", "worker", "dev", "server", "metrics", "children"))
# The web layer and the entry point, outside the package: they import it, never the reverse.
ENTRY_POINTS = ("handlers", "settings", "run")
WORKER = "notify_server.worker"
# What a Celery worker has installed: this package, celery, redis and orjson (and the stdlib).
WORKER_MAY_IMPORT = ("notify_server.protocol", WORKER, "celery", "redis", "orjson")


def within(name: str, prefix: str) -> bool:
    """True when the dotted `name` is `prefix` or lies inside it."""
    return name == prefix or name.startswith(prefix + ".")


def is_pure(name: str) -> bool:
    return any(within(name, pure) for pure in PURE_PACKAGES + PURE_MODULES)


def imports(module: str, source: str, is_package: bool = False) -> List[Tuple[int, str]]:
    """(line, dotted name) of everything `source` imports, anywhere in it.

    `from P import a` gives `P.a` (`a` may be a submodule of P or a name in
    it: the rules match on prefixes, so either way it lies inside P).
    Relative imports are resolved against `module` (a package's own name
    when `is_package`, for its __init__.py).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            found.extend((node.lineno, f"{base}.{alias.name}" if base else alias.name)
                         for alias in node.names)
    return sorted(found)


def _absolute(module: str, is_package: bool, level: int, name: Optional[str]) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def _pure_rule(module: str, line: int, name: str) -> Optional[str]:
    if is_pure(module) and not is_pure(name) and any(
            within(name, forbidden) for forbidden in IO_LIBRARIES + ADAPTERS):
        return f"{module}:{line} imports {name}: a pure module does no I/O and uses no adapter"
    return None


def _entry_point_rule(module: str, line: int, name: str) -> Optional[str]:
    if within(module, "notify_server") and name.split(".")[0] in ENTRY_POINTS:
        return (f"{module}:{line} imports {name}: "
                "the package never imports the web layer or settings")
    return None


def _worker_rule(module: str, line: int, name: str) -> Optional[str]:
    if within(module, WORKER) and not worker_may_import(name):
        return (f"{module}:{line} imports {name}: the worker side has only "
                "notify_server.protocol, the standard library, celery, redis and orjson")
    return None


def worker_may_import(name: str) -> bool:
    return (name.split(".")[0] in sys.stdlib_module_names
            or any(within(name, allowed) for allowed in WORKER_MAY_IMPORT))


RULES = (_pure_rule, _entry_point_rule, _worker_rule)


def violations(module: str, source: str, is_package: bool = False) -> List[str]:
    """Every rule `source`, the text of `module`, breaks: one line per import."""
    return [problem for line, name in imports(module, source, is_package) for rule in RULES
            for problem in [rule(module, line, name)] if problem is not None]


def package_modules() -> List[Tuple[str, Path, bool]]:
    """(dotted name, path, is_package) of every module under notify_server/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found.append((".".join(parts[:-1] if is_package else parts), path, is_package))
    return found


# -- each rule catches what it is for ----------------------------------------------------

@pytest.mark.parametrize("module", ["notify_server.queue.status", "notify_server.config",
                                    "notify_server.celery_io.bridge_mapping",
                                    "notify_server.celery_io.bridge_rules"])
@pytest.mark.parametrize("statement", ["import redis", "from tornado.iostream import IOStream",
                                       "import celery.events", "from kombu import Connection"])
def test_a_pure_module_importing_an_io_library_is_reported(module, statement):
    library = statement.split()[1].split(".")[0]
    assert any(f"imports {library}" in problem for problem in violations(module, statement))


@pytest.mark.parametrize("statement", [
    "from notify_server.redis_io.history import History",
    "from notify_server import metrics",
    "import notify_server.edge.connection",
    "from ..worker.emitter import Emitter",
])
def test_a_pure_module_importing_an_adapter_is_reported(statement):
    assert violations("notify_server.delivery.hub", statement)


def test_an_import_inside_a_function_counts():
    source = "def later():\n    if True:\n        from redis.asyncio import Redis\n"
    assert violations("notify_server.protocol.messages", source) == [
        "notify_server.protocol.messages:3 imports redis.asyncio.Redis: "
        "a pure module does no I/O and uses no adapter"]


def test_pure_modules_may_import_each_other_and_non_io_libraries():
    source = ("import orjson\nimport jwt\nfrom notify_server.protocol import task_events\n"
              "from notify_server.access.auth import Scope\n"
              "from notify_server.celery_io.bridge_mapping import CeleryEventMapper\n")
    assert violations("notify_server.queue.scope", source + "from . import status\n") == []
    assert violations("notify_server.celery_io.bridge_rules",
                      source + "from .bridge_mapping import Outgoing\n") == []


def test_adapters_may_import_io_libraries():
    assert violations("notify_server.redis_io.relay", "from redis.asyncio import Redis") == []


@pytest.mark.parametrize("statement", ["import handlers", "from handlers.websocket import X",
                                       "import settings", "from run import main",
                                       "def f():\n    import settings as s\n"])
@pytest.mark.parametrize("module", ["notify_server.server", "notify_server.protocol.names",
                                    "notify_server.worker"])
def test_importing_the_web_layer_or_settings_is_reported(module, statement):
    assert any("never imports the web layer" in problem
               for problem in violations(module, statement))


@pytest.mark.parametrize("statement", ["import jwt", "import tornado.ioloop",
                                       "from notify_server.protocol.messages import Event\n"
                                       "from notify_server.redis_io import clients",
                                       "from notify_server import config", "import kombu",
                                       "import notify_server"])
def test_the_worker_side_importing_past_its_dependencies_is_reported(statement):
    problems = violations("notify_server.worker.hook", statement)
    assert problems and all("the worker side has only" in problem for problem in problems)


def test_the_worker_side_may_import_protocol_itself_the_stdlib_celery_and_redis():
    source = ("import os\nimport collections.abc\nfrom celery import signals\n"
              "from redis.sentinel import Sentinel\nfrom notify_server.protocol import names\n"
              "from notify_server.worker.emitter import Emitter\nfrom .emitter import Emitter\n")
    assert violations("notify_server.worker.hook", source) == []
    assert violations("notify_server.worker", "from .hook import install", is_package=True) == []


def test_relative_imports_are_resolved_against_the_module():
    assert imports("notify_server.delivery.hub", "from ..protocol import messages") == [
        (1, "notify_server.protocol.messages")]
    assert imports("notify_server.worker", "from . import hook", is_package=True) == [
        (1, "notify_server.worker.hook")]


# -- the real tree -------------------------------------------------------------------------

@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_every_pure_package_exists(package):
    assert (ROOT.joinpath(*package.split(".")) / "__init__.py").is_file(), package


def test_the_package_keeps_every_boundary():
    modules = package_modules()
    assert {name for name, _, _ in modules} >= {*PURE_PACKAGES, *PURE_MODULES, WORKER,
                                                 "notify_server.server"}
    problems = [problem for name, path, is_package in modules
                for problem in violations(name, path.read_text(), is_package)]
    assert not problems, "boundary violations:\n" + "\n".join(problems)


def test_what_the_worker_side_reaches_needs_only_the_workers_dependencies():
    """A worker has celery and redis only: the protocol modules the worker side
    imports (and their parent packages), and what those import, keep to the same list."""
    modules = {name: (path, is_package) for name, path, is_package in package_modules()}

    def reached_from(name: str) -> List[str]:
        # The longest prefix that is a module, with every package above it.
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]

    pending = [name for name in modules if within(name, WORKER)]
    reached = set(pending)
    problems = []
    while pending:
        module = pending.pop()
        path, is_package = modules[module]
        for line, name in imports(module, path.read_text(), is_package):
            if not worker_may_import(name):
                problems.append(f"{module}:{line} imports {name}, reached from the worker side")
            for found in reached_from(name):
                if found not in reached:
                    reached.add(found)
                    pending.append(found)
    assert "notify_server.protocol.task_events" in reached
    assert not problems, "\n".join(problems)
