"""The two modules that must stay pure import only the standard library.

The layer order itself (``log`` -> ``raft`` -> ``distributed`` -> ``server``/``mux``/
``discovery`` -> ``agent`` -> ``cmd``, no gRPC below the server, a client without node code)
is checked by ``lint-imports`` in ``make lint`` (docs/architecture.md). What import-linter
cannot say is "nothing but the standard library", so that is checked here.
Read from the source with :mod:`ast` (every import statement, including the
ones inside functions and ``TYPE_CHECKING`` blocks), so a lazy import cannot hide one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = ROOT / "internal"


def imported_modules(path: Path) -> Iterator[str]:
    """Every absolute module name ``path`` imports."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def imports_of(folder: Path) -> list[tuple[str, str]]:
    """(file relative to the repository, module) for every import under ``folder``."""
    return [
        (str(path.relative_to(ROOT)), module)
        for path in sorted(folder.rglob("*.py"))
        for module in imported_modules(path)
    ]


def _is(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_domain_imports_only_the_standard_library_and_the_wire_contract() -> None:
    allowed = ("raftlog.domain", "raftlog.api.contract")
    found = [
        (where, module)
        for where, module in imports_of(INTERNAL / "domain")
        if module.split(".")[0] not in sys.stdlib_module_names
        and not any(_is(module, a) for a in allowed)
    ]
    assert not found, f"raftlog.domain imports beyond the stdlib and the contract: {found}"


def test_the_wire_contract_is_pure() -> None:
    found = [
        module
        for module in imported_modules(ROOT / "api" / "contract.py")
        if module.split(".")[0] not in sys.stdlib_module_names
    ]
    assert not found, f"raftlog.api.contract imports {found}"
