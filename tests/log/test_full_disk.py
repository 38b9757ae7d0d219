"""The commit log on a file system that fills up (a small tmpfs the test mounts, as root).

A full disk must be an ``OSError(ENOSPC)`` from an append, never a SIGBUS: the index is a
sparse memory-mapped file, and a store into one of its pages that the file system cannot
allocate kills the process. So its blocks are allocated (zeros written ahead) before
entries are written into them. The append that fails leaves nothing behind; once space
is freed, appends go on; every acknowledged record reads back, also after a reopen.

The log runs in a child process: a SIGBUS there fails the test instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from support.mounts import tmpfs

CHILD = textwrap.dedent(
    """
    import errno, sys
    from pathlib import Path
    from raftlog.log import Log, LogConfig, SyncPolicy

    mount = Path(sys.argv[1])
    cfg = LogConfig(sync=SyncPolicy.NEVER)
    log = Log.open(mount / "log", cfg)
    log.append_batch_nosync([b"first"])
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    acked = [b"first"]
    # 1-byte records: 9-byte frames, 12-byte index entries: the index needs a new page
    # (every 341 entries) before the store does (every 455 frames)
    failed = None
    for i in range(20000):
        rec = bytes([i % 256])
        try:
            log.append_batch_nosync([rec])
        except OSError as exc:
            failed = exc
            break
        acked.append(rec)
    assert failed is not None and failed.errno == errno.ENOSPC, failed
    assert log.next_offset == len(acked)
    assert [log.read(o) for o in range(len(acked))] == acked
    filler.unlink()
    log.append_batch_nosync([b"after", b"space"])
    acked += [b"after", b"space"]
    log.close_sync()
    log = Log.open(mount / "log", cfg)
    assert [log.read(o) for o in range(log.next_offset)] == acked
    log.close_sync()
    print("ok", len(acked))
    """
)


def test_a_full_disk_fails_the_append_never_the_process(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "1m") as mount:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(mount)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert child.returncode == 0, f"exit {child.returncode}:\n{child.stdout}\n{child.stderr}"
    assert child.stdout.startswith("ok ")
