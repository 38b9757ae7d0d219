"""Raft snapshots on disk: written through a sink, finalized atomically, kept last-N.

Layout under the store's directory::

    <term>-<index>-<created_ns>/        one complete snapshot
        data                            the state machine's bytes
        meta.json                       header line with a checksum, then JSON (below)
    <id>.tmp/                           a snapshot being written (or left by a crash)
    <id>.deleting.tmp/                  a snapshot being removed by retention

A snapshot becomes visible only by the atomic rename of its finished temp directory, after
its data and meta were fsynced; the parent directory is fsynced after the rename. Anything
ending in ``.tmp`` is therefore incomplete and is removed when the store is opened.

``meta.json``::

    raftlog-snapshot 1 <sha256 hex of the JSON body>\\n
    {"created_ns":...,"id":"5-120-...","index":120,"metadata":"<base64>","sha256":"<data>",
     "size":1048576,"term":5}

``metadata`` is opaque to the store: the runtime puts the encoded Raft snapshot metadata
(membership at ``index``) there. The data checksum is verified as a reader reaches the end;
:meth:`SnapshotStore.verify` reads a snapshot through once.

One store object owns its directory; two processes must not share one.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from raftlog.log.fileio import fsync_dir

log = logging.getLogger("raftlog.raft.snapshot")

#: Snapshots kept after each commit, by default.
DEFAULT_RETAIN = 2
_META_FILE = "meta.json"
_DATA_FILE = "data"
_TMP_SUFFIX = ".tmp"
_MAGIC = "raftlog-snapshot"
_VERSION = 1
_MAX_META_BYTES = 16 * 1024 * 1024


class SnapshotStoreError(Exception):
    """A snapshot cannot be written, listed or read."""


class CorruptSnapshotError(SnapshotStoreError):
    """A snapshot's meta or data does not match its checksum or size."""


class SnapshotNotFoundError(SnapshotStoreError):
    """No complete snapshot has this id (never made, deleted by retention, or corrupt)."""


class SnapshotSinkClosedError(SnapshotStoreError):
    """The sink was already committed or aborted."""


@dataclass(frozen=True)
class StoredSnapshot:
    """Description of one snapshot on disk.

    (Named apart from the core's ``raftlog.raft.types.SnapshotMeta``, which describes the
    Raft side - index, term, membership - and travels inside :attr:`metadata`.)
    """

    #: Directory name, unique in the store: ``<term>-<index>-<created_ns>``.
    id: str
    #: Last log index and its term covered by the snapshot.
    index: int
    term: int
    #: Data size in bytes and its SHA-256 (hex).
    size: int
    sha256: str
    #: Opaque bytes stored with the snapshot (the encoded Raft snapshot metadata).
    metadata: bytes
    #: Creation time, nanoseconds since the epoch (orders snapshots of equal index/term).
    created_ns: int

    def sort_key(self) -> tuple[int, int, int]:
        return (self.index, self.term, self.created_ns)


def _encode_meta(meta: StoredSnapshot) -> bytes:
    body = json.dumps(
        {
            "id": meta.id,
            "index": meta.index,
            "term": meta.term,
            "size": meta.size,
            "sha256": meta.sha256,
            "metadata": base64.b64encode(meta.metadata).decode("ascii"),
            "created_ns": meta.created_ns,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    return f"{_MAGIC} {_VERSION} {hashlib.sha256(body).hexdigest()}\n".encode("ascii") + body


def _decode_meta(data: bytes, where: str) -> StoredSnapshot:
    header, sep, body = data.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != _MAGIC.encode("ascii"):
        raise CorruptSnapshotError(f"{where}: not a snapshot meta file (bad header)")
    if parts[1] != str(_VERSION).encode("ascii"):
        raise CorruptSnapshotError(f"{where}: meta format version {parts[1]!r} not supported")
    if hashlib.sha256(body).hexdigest().encode("ascii") != parts[2]:
        raise CorruptSnapshotError(f"{where}: meta checksum mismatch")
    try:
        raw = json.loads(body)
        meta = StoredSnapshot(
            id=str(raw["id"]),
            index=int(raw["index"]),
            term=int(raw["term"]),
            size=int(raw["size"]),
            sha256=str(raw["sha256"]),
            metadata=base64.b64decode(raw["metadata"], validate=True),
            created_ns=int(raw["created_ns"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSnapshotError(f"{where}: meta content invalid: {exc}") from exc
    return meta


class SnapshotSink:
    """Receives one snapshot's bytes; :meth:`commit` makes it visible, :meth:`abort` drops it.

    ``write`` appends to a buffered file (page cache; no fsync) and hashes the bytes, so it
    is cheap per call; use :meth:`write_async` for large chunks from event-loop code.
    Usable as a context manager: leaving the block without a commit aborts.
    """

    def __init__(self, store: SnapshotStore, index: int, term: int, metadata: bytes) -> None:
        self._store = store
        self.index = index
        self.term = term
        self.metadata = bytes(metadata)
        self.created_ns = time.time_ns()
        self.id = f"{term}-{index}-{self.created_ns}"
        self._tmp_dir = store.directory / (self.id + _TMP_SUFFIX)
        self._final_dir = store.directory / self.id
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        try:
            self._tmp_dir.mkdir()
            self._file: BinaryIO = (self._tmp_dir / _DATA_FILE).open("wb")
        except OSError as exc:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise SnapshotStoreError(f"cannot create snapshot {self.id}: {exc}") from exc

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the snapshot data."""
        if self._done:
            raise SnapshotSinkClosedError(f"snapshot {self.id} was already committed or aborted")
        try:
            self._file.write(chunk)
        except OSError as exc:
            self.abort()
            raise SnapshotStoreError(f"cannot write snapshot {self.id}: {exc}") from exc
        self._hash.update(chunk)
        self._size += len(chunk)

    async def write_async(self, chunk: bytes) -> None:
        """:meth:`write` in a worker thread."""
        await asyncio.to_thread(self.write, chunk)

    def commit_sync(self) -> StoredSnapshot:
        """Fsync data and meta, rename into place, fsync the directory, apply retention."""
        if self._done:
            raise SnapshotSinkClosedError(f"snapshot {self.id} was already committed or aborted")
        self._done = True
        meta = StoredSnapshot(
            id=self.id,
            index=self.index,
            term=self.term,
            size=self._size,
            sha256=self._hash.hexdigest(),
            metadata=self.metadata,
            created_ns=self.created_ns,
        )
        fsync = self._store.fsync
        try:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            meta_path = self._tmp_dir / _META_FILE
            with meta_path.open("wb") as f:
                f.write(_encode_meta(meta))
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            if fsync:
                fsync_dir(self._tmp_dir)
            os.rename(self._tmp_dir, self._final_dir)
            if fsync:
                fsync_dir(self._store.directory)
        except OSError as exc:
            self._file.close()
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise SnapshotStoreError(f"cannot commit snapshot {self.id}: {exc}") from exc
        log.info(
            "snapshot %s committed: index %d term %d, %d bytes",
            meta.id,
            meta.index,
            meta.term,
            meta.size,
        )
        self._store.apply_retention()
        return meta

    async def commit(self) -> StoredSnapshot:
        """:meth:`commit_sync` in a worker thread; returns the snapshot's description."""
        return await asyncio.to_thread(self.commit_sync)

    def abort(self) -> None:
        """Drop everything written; idempotent, and a no-op after a commit."""
        if self._done:
            return
        self._done = True
        self._file.close()
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def __enter__(self) -> SnapshotSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class SnapshotReader:
    """Reads one snapshot's data and checks its size and SHA-256 when the end is reached.

    A mismatch raises :class:`CorruptSnapshotError` from the ``read`` that hits the end, so
    a consumer that reads to the end never accepts corrupt data silently.
    """

    def __init__(self, meta: StoredSnapshot, file: BinaryIO) -> None:
        self.meta = meta
        self._file = file
        self._hash = hashlib.sha256()
        self._read = 0
        self._verified = False

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        if data:
            self._hash.update(data)
            self._read += len(data)
        if (not data or n < 0) and not self._verified:
            self._check()
        return data

    def _check(self) -> None:
        if self._read != self.meta.size or self._hash.hexdigest() != self.meta.sha256:
            raise CorruptSnapshotError(
                f"snapshot {self.meta.id}: data does not match its meta "
                f"({self._read} bytes read, {self.meta.size} expected, or checksum mismatch)"
            )
        self._verified = True

    @property
    def verified(self) -> bool:
        """Whether the whole data was read and matched its checksum."""
        return self._verified

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SnapshotStore:
    """The snapshots of one node in ``directory``.

    ``retain`` (default 2): complete snapshots kept after each commit, newest first.
    ``fsync`` (default True): make data, meta and renames durable before commit returns.
    Opening the store removes incomplete temp directories left by a crash.
    """

    def __init__(
        self, directory: str | Path, *, retain: int = DEFAULT_RETAIN, fsync: bool = True
    ) -> None:
        if not isinstance(retain, int) or retain < 1:
            raise ValueError(f"snapshot retain must be an integer >= 1, got {retain!r}")
        self.directory = Path(directory)
        self.retain = retain
        self.fsync = fsync
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SnapshotStoreError(f"cannot create {self.directory}: {exc}") from exc
        self._clean_temp()

    def _clean_temp(self) -> None:
        for entry in self.directory.iterdir():
            if entry.name.endswith(_TMP_SUFFIX):
                log.warning("removing incomplete snapshot directory %s", entry)
                shutil.rmtree(entry, ignore_errors=True)

    def create(self, index: int, term: int, metadata: bytes = b"") -> SnapshotSink:
        """A sink for a new snapshot covering the log up to ``index`` (in ``term``)."""
        if index < 0 or term < 0:
            raise ValueError(f"snapshot index and term must be >= 0, got {index}, {term}")
        return SnapshotSink(self, index, term, metadata)

    def _read_meta(self, snap_dir: Path) -> StoredSnapshot:
        path = snap_dir / _META_FILE
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_META_BYTES + 1)
        except FileNotFoundError as exc:
            raise CorruptSnapshotError(f"{snap_dir}: no {_META_FILE}") from exc
        except OSError as exc:
            raise SnapshotStoreError(f"cannot read {path}: {exc}") from exc
        if len(data) > _MAX_META_BYTES:
            raise CorruptSnapshotError(f"{path}: larger than {_MAX_META_BYTES} bytes")
        meta = _decode_meta(data, str(path))
        if meta.id != snap_dir.name:
            raise CorruptSnapshotError(f"{path}: names snapshot {meta.id!r}, not {snap_dir.name}")
        return meta

    def list(self) -> list[StoredSnapshot]:
        """Complete snapshots, newest (highest index, then term, then time) first.

        Snapshots whose meta is corrupt are left out, with a warning; ``open`` on one of
        them raises :class:`CorruptSnapshotError`.
        """
        found: list[StoredSnapshot] = []
        for entry in self.directory.iterdir():
            if entry.name.endswith(_TMP_SUFFIX) or not entry.is_dir():
                continue
            try:
                found.append(self._read_meta(entry))
            except CorruptSnapshotError as exc:
                log.warning("skipping corrupt snapshot: %s", exc)
        found.sort(key=StoredSnapshot.sort_key, reverse=True)
        return found

    def latest(self) -> StoredSnapshot | None:
        """The newest complete snapshot, if any."""
        snaps = self.list()
        return snaps[0] if snaps else None

    def open(self, snapshot_id: str) -> tuple[StoredSnapshot, SnapshotReader]:
        """The snapshot's description and a reader of its data (close it when done)."""
        if not snapshot_id or "/" in snapshot_id or snapshot_id.startswith("."):
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id!r}")
        snap_dir = self.directory / snapshot_id
        if snapshot_id.endswith(_TMP_SUFFIX) or not snap_dir.is_dir():
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id!r} in {self.directory}")
        meta = self._read_meta(snap_dir)
        try:
            file = (snap_dir / _DATA_FILE).open("rb")
        except OSError as exc:
            raise CorruptSnapshotError(f"snapshot {snapshot_id}: cannot open data: {exc}") from exc
        actual = os.fstat(file.fileno()).st_size
        if actual != meta.size:
            file.close()
            raise CorruptSnapshotError(
                f"snapshot {snapshot_id}: data is {actual} bytes, meta says {meta.size}"
            )
        return meta, SnapshotReader(meta, file)

    def verify(self, snapshot_id: str, chunk_size: int = 1024 * 1024) -> StoredSnapshot:
        """Read a snapshot through once and check its checksum; its description if sound."""
        meta, reader = self.open(snapshot_id)
        with reader:
            while reader.read(chunk_size):
                pass
        return meta

    def delete(self, snapshot_id: str) -> None:
        """Remove one snapshot: atomically hidden by a rename, then deleted."""
        snap_dir = self.directory / snapshot_id
        if not snap_dir.is_dir() or snapshot_id.endswith(_TMP_SUFFIX):
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id!r} in {self.directory}")
        doomed = self.directory / f"{snapshot_id}.deleting{_TMP_SUFFIX}"
        try:
            os.rename(snap_dir, doomed)
            if self.fsync:
                fsync_dir(self.directory)
        except OSError as exc:
            raise SnapshotStoreError(f"cannot delete snapshot {snapshot_id}: {exc}") from exc
        shutil.rmtree(doomed, ignore_errors=True)

    def apply_retention(self) -> builtins.list[str]:
        """Delete complete snapshots beyond the newest ``retain``; the ids deleted."""
        deleted: builtins.list[str] = []
        for meta in self.list()[self.retain :]:
            try:
                self.delete(meta.id)
            except SnapshotStoreError as exc:
                log.warning("retention could not delete snapshot %s: %s", meta.id, exc)
                continue
            deleted.append(meta.id)
        return deleted
