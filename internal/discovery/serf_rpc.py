"""An asyncio client of the Serf agent's RPC protocol (msgpack over TCP on 127.0.0.1).

Wire format (Serf's ``agent/ipc.go``, IPC version 1): every request is a msgpack map
``{"Command": str, "Seq": int}`` followed, for commands that take one, by a msgpack body.
Every reply is a header ``{"Seq": int, "Error": str}`` followed by a body *only for some
commands*; the reply itself never says whether a body follows, so this client keeps, per
outstanding sequence number, whether it expects one (see :data:`_RESPONSE_BODY`). An agent
that refuses a command before running it (handshake or auth missing, unknown command) sends
the header alone.

``stream`` subscribes to events: after the header-only acknowledgement, every event arrives
as a header carrying the *stream request's* Seq plus a body (``{"Event": ..., "Members":
[...]}`` for member events) until ``stop`` names that Seq.

One reader task, owned by the client, decodes every reply with a feeding
:class:`msgpack.Unpacker` and routes it by Seq. When the connection dies, every pending call
fails at once with :class:`SerfConnectionError` and every open event stream ends with the same
error. Every call is bounded by a timeout (default :attr:`SerfRPCClient.timeout`).
"""

# Every call here takes an explicit bound (`timeout`, in seconds) by design.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

__all__ = [
    "MEMBER_EVENT_TYPES",
    "EventStream",
    "Member",
    "MemberEvent",
    "SerfConnectionError",
    "SerfRPCClient",
    "SerfRPCError",
    "SerfStreamOverflowError",
    "SerfTimeoutError",
]

log = logging.getLogger("raftlog.discovery.serf_rpc")

#: The IPC protocol version this client speaks (Serf's MinIPCVersion == MaxIPCVersion == 1).
IPC_VERSION: Final = 1

#: The member event types Serf streams (``stream`` filter and ``Event`` field).
MEMBER_EVENT_TYPES: Final = (
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
)

#: Whether a successful reply to each command carries a body after its header.
_RESPONSE_BODY: Final[Mapping[str, bool]] = {
    "handshake": False,
    "auth": False,
    "event": False,
    "join": True,
    "members": True,
    "members-filtered": True,
    "stream": False,
    "monitor": False,
    "stop": False,
    "leave": False,
    "tags": False,
    "stats": True,
}

#: Errors the agent sends before running a command: those replies never carry a body.
_EARLY_ERRORS: Final = frozenset(
    {
        "Handshake required",
        "Unsupported command",
        "Authentication required",
    }
)


class SerfRPCError(Exception):
    """The agent answered a command with an error (``command`` and the agent's text)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"serf rpc {command!r}: {error}")
        self.command = command
        self.error = error


class SerfConnectionError(SerfRPCError):
    """The RPC connection could not be made, or died while a call or stream was open."""


class SerfTimeoutError(SerfRPCError, TimeoutError):
    """A call got no reply within its timeout (the connection stays usable)."""


class SerfStreamOverflowError(SerfRPCError):
    """An event stream's consumer fell too far behind; events were lost (resubscribe)."""


@dataclass(frozen=True)
class Member:
    """One Serf cluster member as the agent reports it.

    ``addr`` is the gossip IP as text and ``port`` the gossip port; ``status`` is one of
    ``alive``, ``leaving``, ``left``, ``failed`` (Serf's MemberStatus strings).
    """

    name: str
    addr: str
    port: int
    tags: Mapping[str, str] = field(default_factory=dict)
    status: str = "alive"
    protocol: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Member:
        """Decode a ``Member`` map; ``Addr`` is Go's ``net.IP`` (4 or 16 raw bytes)."""
        addr_raw = raw.get("Addr", b"")
        addr = _decode_ip(addr_raw)
        tags = raw.get("Tags") or {}
        return cls(
            name=str(raw.get("Name", "")),
            addr=addr,
            port=int(raw.get("Port", 0)),
            tags={str(k): str(v) for k, v in tags.items()},
            status=str(raw.get("Status", "")),
            protocol=(
                int(raw.get("ProtocolMin", 0)),
                int(raw.get("ProtocolMax", 0)),
                int(raw.get("ProtocolCur", 0)),
            ),
        )


def _decode_ip(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        if len(value) in (4, 16):
            ip = ipaddress.ip_address(bytes(value))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ip)
        return bytes(value).decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class MemberEvent:
    """A member event from the stream: ``event`` is one of :data:`MEMBER_EVENT_TYPES`."""

    event: str
    members: tuple[Member, ...]

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> MemberEvent:
        return cls(
            event=str(raw.get("Event", "")),
            members=tuple(Member.from_wire(m) for m in raw.get("Members") or ()),
        )


_END: Final = object()


class EventStream:
    """An open ``stream`` subscription: iterate it with ``async for`` to get events.

    Events are buffered up to ``max_queued``; a consumer that falls further behind gets
    :class:`SerfStreamOverflowError` (events were dropped: take a fresh member list). The
    stream ends with :class:`SerfConnectionError` when the connection dies. ``close()``
    sends ``stop`` (bounded) and ends the iteration.
    """

    def __init__(self, client: SerfRPCClient, seq: int, max_queued: int) -> None:
        self._client = client
        self.seq = seq
        self._max_queued = max_queued
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._error: SerfRPCError | None = None
        self._closed = False

    # --- called by the client's reader -------------------------------------------------
    def _push(self, body: object) -> None:
        if self._closed or self._error is not None:
            return
        if self._queue.qsize() >= self._max_queued:
            self._fail(
                SerfStreamOverflowError("stream", f"more than {self._max_queued} events queued")
            )
            return
        self._queue.put_nowait(body)

    def _fail(self, error: SerfRPCError) -> None:
        if self._error is None and not self._closed:
            self._error = error
            self._queue.put_nowait(_END)

    # --- consumer side -----------------------------------------------------------------
    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> MemberEvent | Mapping[str, Any]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # every later read ends too
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if isinstance(item, Mapping) and "Members" in item:
                return MemberEvent.from_wire(item)
            if isinstance(item, Mapping):
                return item  # user events and queries, passed through undecoded

    async def next(self, timeout: float) -> MemberEvent | Mapping[str, Any]:
        """The next event, waiting at most ``timeout`` seconds (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def close(self, timeout: float | None = None) -> None:
        """Stop the subscription on the agent (best effort) and end the iteration."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(_END)
        await self._client._stop_stream(self, timeout)


@dataclass
class _Pending:
    command: str
    expects_body: bool
    future: asyncio.Future[Any] | None  # None once the caller gave up (reply is skipped)
    body_on_error: bool = False  # join answers with a body even when it failed


class SerfRPCClient:
    """An RPC connection to one Serf agent.

    ``address`` is ``host:port`` of the agent's ``-rpc-addr``; ``auth_key`` is sent with the
    ``auth`` command when the agent has an RPC auth key; ``timeout`` (seconds, default 5.0)
    bounds every call that is not given its own. Use :meth:`connect` (handshake and auth
    included), then the command methods, then :meth:`close` (or ``async with``).
    """

    def __init__(
        self,
        address: str,
        *,
        auth_key: str | None = None,
        timeout: float = 5.0,
        max_queued_events: int = 4096,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.address = address
        self.auth_key = auth_key
        self.timeout = timeout
        self.max_queued_events = max_queued_events
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[int, EventStream] = {}
        self._closed_error: SerfConnectionError | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def connect(self, timeout: float | None = None) -> SerfRPCClient:
        """Open the TCP connection, handshake and (if configured) authenticate."""
        if self._writer is not None or self._closed_error is not None:
            raise SerfConnectionError("connect", "a client connects once; make a new one")
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"serf rpc address must be host:port, got {self.address!r}")
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                self._reader, self._writer = await asyncio.open_connection(
                    host.strip("[]"), int(port)
                )
        except (OSError, TimeoutError) as exc:
            raise SerfConnectionError(
                "connect", f"cannot reach serf agent at {self.address}: {exc or 'timeout'}"
            ) from exc
        self._reader_task = asyncio.create_task(
            self._read_loop(self._reader), name=f"serf-rpc-reader:{self.address}"
        )
        try:
            await self._call("handshake", {"Version": IPC_VERSION}, wait)
            if self.auth_key:
                await self._call("auth", {"AuthKey": self.auth_key}, wait)
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def connected(self) -> bool:
        """True while the connection is open and its reader is running."""
        return self._reader_task is not None and not self._reader_task.done()

    async def close(self) -> None:
        """Close the connection, stop the reader and fail whatever is still pending."""
        task, self._reader_task = self._reader_task, None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(SerfConnectionError("close", "client closed"))
        if writer is not None:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def __aenter__(self) -> SerfRPCClient:
        if not self.connected:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- commands ----------------------------------------------------------------------
    async def join(
        self, existing: Iterable[str], *, replay: bool = False, timeout: float | None = None
    ) -> int:
        """Ask the agent to join the gossip addresses ``existing`` (``host:port``).

        Returns how many nodes were contacted; raises :class:`SerfRPCError` when none was.
        ``replay`` asks for old user events to be replayed (we never want that).
        """
        body = await self._call(
            "join", {"Existing": list(existing), "Replay": replay}, timeout, body_on_error=True
        )
        return int(body.get("Num", 0))

    async def members(self, timeout: float | None = None) -> list[Member]:
        """Every member the agent knows, with tags and status (alive, left, failed...)."""
        body = await self._call("members", None, timeout)
        return [Member.from_wire(m) for m in body.get("Members") or ()]

    async def members_filtered(
        self,
        *,
        tags: Mapping[str, str] | None = None,
        status: str = "",
        name: str = "",
        timeout: float | None = None,
    ) -> list[Member]:
        """Members matching anchored regular expressions on tags, status and name."""
        body = await self._call(
            "members-filtered",
            {"Tags": dict(tags or {}), "Status": status, "Name": name},
            timeout,
        )
        return [Member.from_wire(m) for m in body.get("Members") or ()]

    async def stream(
        self, types: Iterable[str] = MEMBER_EVENT_TYPES, timeout: float | None = None
    ) -> EventStream:
        """Subscribe to events of ``types`` (Serf filter names, e.g. ``member-join``)."""
        if self._closed_error is not None or self._writer is None:
            raise SerfConnectionError("stream", "not connected")
        seq = self._next_seq()
        stream = EventStream(self, seq, self.max_queued_events)
        # Registered before the request goes out: events may follow the ack immediately.
        self._streams[seq] = stream
        try:
            await self._call("stream", {"Type": ",".join(types)}, timeout, seq=seq)
        except BaseException:
            self._streams.pop(seq, None)
            raise
        return stream

    async def leave(self, timeout: float | None = None) -> None:
        """Leave the cluster gracefully; the agent then shuts itself down."""
        await self._call("leave", None, timeout)

    async def stats(self, timeout: float | None = None) -> Mapping[str, Any]:
        """The agent's statistics map (agent, runtime, serf, tags sections)."""
        body = await self._call("stats", None, timeout)
        return dict(body)

    async def _stop_stream(self, stream: EventStream, timeout: float | None) -> None:
        try:
            if self.connected:
                await self._call("stop", {"Stop": stream.seq}, timeout)
        except SerfRPCError as exc:
            log.debug("stopping serf stream %d: %s", stream.seq, exc)
        finally:
            self._streams.pop(stream.seq, None)

    # --- machinery ---------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _call(
        self,
        command: str,
        body: Mapping[str, Any] | None,
        timeout: float | None,
        *,
        seq: int | None = None,
        body_on_error: bool = False,
    ) -> Mapping[str, Any]:
        if self._closed_error is not None:
            raise SerfConnectionError(command, self._closed_error.error)
        writer = self._writer
        if writer is None or not self.connected:
            raise SerfConnectionError(command, "not connected")
        if seq is None:
            seq = self._next_seq()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = _Pending(command, _RESPONSE_BODY.get(command, False), future, body_on_error)
        self._pending[seq] = pending
        data = msgpack.packb({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack.packb(body)
        wait = self.timeout if timeout is None else timeout
        try:
            writer.write(data)
            async with asyncio.timeout(wait):
                await writer.drain()
                result: Mapping[str, Any] = await asyncio.shield(future)
                return result
        except TimeoutError as exc:
            raise SerfTimeoutError(command, f"no reply within {wait:g} s") from exc
        except (ConnectionError, OSError) as exc:
            raise SerfConnectionError(command, f"connection lost: {exc}") from exc
        finally:
            # A reply that comes later is still decoded (its body skipped) by the reader.
            if not future.done():
                future.cancel()
            if seq in self._pending and self._pending[seq].future is future:
                self._pending[seq].future = None

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        # State: None means the next object is a header; otherwise the body it belongs to.
        awaiting_body: tuple[int, _Pending | None, EventStream | None, str] | None = None
        error: SerfConnectionError
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    error = SerfConnectionError("read", "connection closed by the agent")
                    break
                unpacker.feed(chunk)
                for obj in unpacker:
                    if awaiting_body is None:
                        awaiting_body = self._on_header(obj)
                    else:
                        self._on_body(awaiting_body, obj)
                        awaiting_body = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # decode errors, resets: the connection is unusable
            error = SerfConnectionError("read", f"connection failed: {exc!r}")
        self._fail_all(error)

    def _on_header(
        self, obj: object
    ) -> tuple[int, _Pending | None, EventStream | None, str] | None:
        if not isinstance(obj, Mapping) or "Seq" not in obj:
            raise ValueError(f"unexpected serf rpc header: {obj!r}")
        seq = int(obj["Seq"])
        err = str(obj.get("Error") or "")
        pending = self._pending.pop(seq, None)
        if pending is not None:
            has_body = pending.expects_body and err not in _EARLY_ERRORS
            if err and not pending.body_on_error:
                has_body = False
            if pending.command == "stream" and not err:
                pass  # acknowledged: later headers with this Seq carry events
            elif pending.command == "stream":
                stream = self._streams.pop(seq, None)
                if stream is not None:
                    stream._fail(SerfRPCError("stream", err))
            if has_body:
                return (seq, pending, None, err)
            self._resolve(pending, err, {})
            return None
        stream = self._streams.get(seq)
        if stream is not None:
            return (seq, None, stream, err)
        raise ValueError(f"serf rpc reply for unknown seq {seq}")

    def _on_body(
        self, state: tuple[int, _Pending | None, EventStream | None, str], body: object
    ) -> None:
        _, pending, stream, err = state
        if pending is not None:
            self._resolve(pending, err, body if isinstance(body, Mapping) else {})
        elif stream is not None:
            stream._push(body)

    @staticmethod
    def _resolve(pending: _Pending, err: str, body: Mapping[str, Any]) -> None:
        fut = pending.future
        if fut is None or fut.done():
            return
        if err:
            fut.set_exception(SerfRPCError(pending.command, err))
        else:
            fut.set_result(body)

    def _fail_all(self, error: SerfConnectionError) -> None:
        if self._closed_error is None:
            self._closed_error = error
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.future is not None and not p.future.done():
                p.future.set_exception(SerfConnectionError(p.command, error.error))
        streams, self._streams = self._streams, {}
        for s in streams.values():
            s._fail(SerfConnectionError("stream", error.error))
