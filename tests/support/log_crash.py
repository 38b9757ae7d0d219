"""Crash images of a commit-log directory, for crash and power-loss tests.

A power loss keeps, of every file, at least what its last fsync covered and at most what
was written; files whose creation was never made durable may vanish. The log reports the
first part through :meth:`raftlog.log.Log.durable_lengths`; :func:`power_loss_image`
builds one possible post-crash directory from it.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from raftlog.log.segment import INDEX_SUFFIX, STORE_SUFFIX


def power_loss_image(
    src: Path,
    durable: dict[Path, int],
    dest: Path,
    rng: random.Random,
    keep_unsynced: bool = True,
) -> None:
    """Copy ``src`` to ``dest`` as a power loss could have left it.

    Stores listed in ``durable`` keep their durable length plus (if ``keep_unsynced``) a
    random part of the bytes written after it; stores not listed are dropped. Index files
    are kept whole, cut at random, or dropped: they carry no durability promise.
    """
    dest.mkdir(parents=True, exist_ok=True)
    by_name = {path.name: length for path, length in durable.items()}
    for path in sorted(src.iterdir()):
        data = path.read_bytes()
        if path.suffix == STORE_SUFFIX:
            if path.name not in by_name:
                continue
            keep = by_name[path.name]
            if keep_unsynced and len(data) > keep:
                keep = rng.randint(keep, len(data))
            (dest / path.name).write_bytes(data[:keep])
        elif path.suffix == INDEX_SUFFIX:
            choice = rng.randrange(3)
            if choice == 0:
                (dest / path.name).write_bytes(data)
            elif choice == 1:
                (dest / path.name).write_bytes(data[: rng.randint(0, len(data))])
        else:
            shutil.copy2(path, dest / path.name)


def cut_file(path: Path, rng: random.Random) -> int:
    """Cut ``path`` at a random byte position; return the new length."""
    data = path.read_bytes()
    keep = rng.randint(0, len(data))
    path.write_bytes(data[:keep])
    return keep


def flip_bytes(path: Path, rng: random.Random, count: int) -> list[int]:
    """Flip ``count`` random bytes of ``path`` (XOR with a non-zero value); return where."""
    data = bytearray(path.read_bytes())
    where: list[int] = []
    for _ in range(count):
        if not data:
            break
        i = rng.randrange(len(data))
        data[i] ^= rng.randint(1, 255)
        where.append(i)
    path.write_bytes(bytes(data))
    return where
