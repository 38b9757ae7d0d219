"""The placement layer and the key hash import only the standard library.

import-linter (``make lint``) keeps ``raftlog.partitions`` below ``raftlog.raft`` and free of
gRPC; this says the stronger thing import-linter cannot: nothing but the standard library,
so a client can hash keys with :mod:`raftlog.api.partitioning` alone and any layer can place
partitions. Read with :mod:`ast`, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def foreign(path: Path, allowed: tuple[str, ...]) -> list[str]:
    return [
        module
        for module in imports(path)
        if module.split(".")[0] not in sys.stdlib_module_names
        and not any(module == a or module.startswith(a + ".") for a in allowed)
    ]


def test_partitions_imports_only_the_standard_library() -> None:
    files = sorted((ROOT / "internal" / "partitions").rglob("*.py"))
    assert files
    found = {str(f.relative_to(ROOT)): foreign(f, ("raftlog.partitions",)) for f in files}
    assert not any(found.values()), found


def test_the_key_hash_imports_only_the_standard_library() -> None:
    assert foreign(ROOT / "api" / "partitioning.py", ()) == []
