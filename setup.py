"""Package list for the folder mapping declared in pyproject.toml.

The repository keeps `internal/`, `api/` and `cmd/` at the top level, while everything
installed lives under the import root `raftlog`. setuptools' package finder cannot add a
prefix to the names it finds, so the names are computed here and everything else stays in
pyproject.toml.
"""

from setuptools import Extension, find_packages, setup

ROOTS = {"raftlog": "internal", "raftlog.api": "api", "raftlog.cmd": "cmd"}

packages: list[str] = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder))

# The native framing helper (internal/log/_frames.c: why it exists is written there). It is
# optional: without a C compiler the install goes on and raftlog.log.framing uses numpy.
frames = Extension(
    "raftlog.log._frames",
    ["internal/log/_frames.c"],
    optional=True,
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

setup(packages=packages, ext_modules=[frames])
