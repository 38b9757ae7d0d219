"""The Serf RPC client against the real agent, plus fake agents for failure paths."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgpack
import pytest

from raftlog.discovery import (
    RPC_ADDR_TAG,
    EventStream,
    MemberEvent,
    SerfAgent,
    SerfConnectionError,
    SerfRPCClient,
    SerfRPCError,
    SerfTimeoutError,
)

AgentFactory = Callable[..., Awaitable[SerfAgent]]


async def next_member_event(
    stream: EventStream, kind: str, name: str, timeout: float
) -> MemberEvent:
    """The next ``kind`` event that names member ``name`` (other events are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {kind} for {name} within {timeout} s")
        event = await stream.next(remaining)
        if (
            isinstance(event, MemberEvent)
            and event.event == kind
            and any(m.name == name for m in event.members)
        ):
            return event


async def test_handshake_and_members_with_tags(make_agent: AgentFactory) -> None:
    agent = await make_agent("n1", tags={"zone": "a"})
    async with SerfRPCClient(agent.rpc_addr, timeout=3.0) as client:
        members = await client.members()
        assert [m.name for m in members] == ["n1"]
        me = members[0]
        assert me.status == "alive"
        assert me.addr == "127.0.0.1"
        assert me.port == int(agent.config.bind_addr.rsplit(":", 1)[1])
        assert me.tags == {RPC_ADDR_TAG: agent.config.advertise_rpc_addr, "zone": "a"}
        filtered = await client.members_filtered(tags={"zone": "b"})
        assert filtered == []
        stats = await client.stats()
        assert stats["agent"]["name"] == "n1"


async def test_join_stream_and_leave(make_agent: AgentFactory) -> None:
    a = await make_agent("a")
    b = await make_agent("b")
    async with SerfRPCClient(a.rpc_addr, timeout=5.0) as client:
        stream = await client.stream()
        assert await client.join([b.config.bind_addr]) == 1
        joined = await next_member_event(stream, "member-join", "b", timeout=10.0)
        member_b = next(m for m in joined.members if m.name == "b")
        assert member_b.tags[RPC_ADDR_TAG] == b.config.advertise_rpc_addr
        assert {m.name for m in await client.members()} == {"a", "b"}

        await b.stop()  # graceful: RPC leave, then the agent exits
        await next_member_event(stream, "member-leave", "b", timeout=10.0)
        statuses = {m.name: m.status for m in await client.members()}
        assert statuses == {"a": "alive", "b": "left"}

        await stream.close(timeout=2.0)
        with pytest.raises(StopAsyncIteration):
            await stream.next(1.0)
        # The connection stays usable after stop.
        assert [m.name for m in await client.members() if m.status == "alive"] == ["a"]


async def test_join_error_carries_agent_text_and_keeps_connection(
    make_agent: AgentFactory, free_port: Callable[[], int]
) -> None:
    agent = await make_agent("solo")
    dead = f"127.0.0.1:{free_port()}"
    async with SerfRPCClient(agent.rpc_addr, timeout=5.0) as client:
        with pytest.raises(SerfRPCError) as info:
            await client.join([dead])
        assert info.value.command == "join"
        assert "127.0.0.1" in info.value.error
        # The reply had a body even though it failed: the stream must still be in step.
        assert [m.name for m in await client.members()] == ["solo"]


async def test_connect_refused_is_a_clear_error(free_port: Callable[[], int]) -> None:
    client = SerfRPCClient(f"127.0.0.1:{free_port()}", timeout=2.0)
    started = time.monotonic()
    with pytest.raises(SerfConnectionError, match="cannot reach serf agent"):
        await client.connect()
    assert time.monotonic() - started < 2.0
    assert not client.connected


class FakeAgent:
    """A scripted RPC server: answers the handshake, then follows ``mode``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server: asyncio.Server | None = None
        self.commands: list[str] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        expecting_body = False
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    return
                unpacker.feed(data)
                for obj in unpacker:
                    if expecting_body:
                        expecting_body = False
                        continue
                    command, seq = obj["Command"], obj["Seq"]
                    self.commands.append(command)
                    expecting_body = command in ("handshake", "auth", "join", "stream")
                    if command == "handshake":
                        writer.write(msgpack.packb({"Seq": seq, "Error": ""}))
                    elif self.mode == "auth" and command == "auth":
                        writer.write(
                            msgpack.packb({"Seq": seq, "Error": "Invalid authentication token"})
                        )
                    elif self.mode == "hangup":
                        writer.close()
                        return
                    # mode "silent": never answer anything else
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def fake_agent(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeAgent, str]]:
    agent = FakeAgent(request.param)
    addr = await agent.start()
    yield agent, addr
    await agent.close()


@pytest.mark.parametrize("fake_agent", ["silent"], indirect=True)
async def test_call_without_reply_times_out(fake_agent: tuple[FakeAgent, str]) -> None:
    _, addr = fake_agent
    async with SerfRPCClient(addr, timeout=2.0) as client:
        started = time.monotonic()
        with pytest.raises(SerfTimeoutError):
            await client.members(timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert client.connected  # a timeout does not kill the connection


@pytest.mark.parametrize("fake_agent", ["hangup"], indirect=True)
async def test_pending_calls_fail_at_once_when_connection_dies(
    fake_agent: tuple[FakeAgent, str],
) -> None:
    _, addr = fake_agent
    client = await SerfRPCClient(addr, timeout=10.0).connect()
    try:
        started = time.monotonic()
        with pytest.raises(SerfConnectionError):
            await client.members()
        assert time.monotonic() - started < 2.0  # not the 10 s timeout
        with pytest.raises(SerfConnectionError):
            await client.members()
    finally:
        await client.close()


@pytest.mark.parametrize("fake_agent", ["auth"], indirect=True)
async def test_auth_rejection_is_reported(fake_agent: tuple[FakeAgent, str]) -> None:
    agent, addr = fake_agent
    client = SerfRPCClient(addr, auth_key="wrong", timeout=2.0)
    with pytest.raises(SerfRPCError, match="Invalid authentication token"):
        await client.connect()
    assert agent.commands == ["handshake", "auth"]
    assert not client.connected
