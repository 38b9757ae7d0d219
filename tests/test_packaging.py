"""The wheel installs everything under ``raftlog`` and its console script works.

Builds the wheel from the repository, installs it into a fresh virtual environment outside
the repository and runs ``raftlog --help`` there: the path a user takes with ``pip install``.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_wheel_installs_under_one_import_root_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheels = list(dist.glob("raftlog-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"raftlog"}, f"wheel installs top-level names other than raftlog: {top}"
    assert "raftlog/api/v1/log.proto" in names
    assert "raftlog/api/v1/log_pb2.py" in names
    assert "raftlog/cmd/main.py" in names
    assert "raftlog/api/admin/v1/admin.proto" in names
    assert "raftlog/api/admin/v1/admin_pb2_grpc.py" in names
    assert "raftlog/telemetry/metrics.py" in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    pip = env_dir / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "-q", str(wheels[0])], check=True, capture_output=True, timeout=600
    )
    out = subprocess.run(
        [str(env_dir / "bin" / "raftlog"), "--help"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "raftlog" in out.stdout
    status = subprocess.run(
        [str(env_dir / "bin" / "raftlog"), "status", "--help"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--format {table,json}" in status.stdout
    # Installed copy, not the repository: imported from the fresh venv's site-packages.
    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import raftlog; print(raftlog.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(env_dir) in where.stdout
