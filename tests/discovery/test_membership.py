"""Membership: Serf events -> handler calls, deterministic with a fake source, then real Serf."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import pytest

from raftlog.discovery import (
    RPC_ADDR_TAG,
    Member,
    MemberEvent,
    Membership,
    MembershipConfig,
    MembershipConfigError,
    SerfAgent,
    SerfMemberSource,
    StaticMembership,
    parse_static_peers,
)
from support.wait import wait_until

AgentFactory = Callable[..., Awaitable[SerfAgent]]


class RecordingHandler:
    """A Handler that records calls and keeps a member map like DistributedLog would."""

    def __init__(self, local: str = "self", leader: bool = True) -> None:
        self.leader = leader
        self.cluster: dict[str, str] = {local: "127.0.0.1:1"}
        self.calls: list[tuple[str, ...]] = []
        self.fail_next = 0
        #: is_leader() calls: proof that a reconcile pass ran and asked.
        self.leader_checks = 0

    async def join(self, node_id: str, rpc_addr: str) -> None:
        self.calls.append(("join", node_id, rpc_addr))
        self._maybe_fail()
        self.cluster[node_id] = rpc_addr

    async def leave(self, node_id: str) -> None:
        self.calls.append(("leave", node_id))
        self._maybe_fail()
        self.cluster.pop(node_id, None)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("raft says no")

    def is_leader(self) -> bool:
        self.leader_checks += 1
        return self.leader

    async def members(self) -> Mapping[str, str]:
        return dict(self.cluster)


class _FakeSubscription:
    def __init__(self, queue: asyncio.Queue[object]) -> None:
        self.queue = queue

    def __aiter__(self) -> _FakeSubscription:
        return self

    async def __anext__(self) -> object:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def close(self, timeout: float | None = None) -> None:
        return None


class FakeSource:
    """A MemberSource fed by the test; the member list follows the events."""

    def __init__(self, members: Sequence[Member] = ()) -> None:
        self.listed = {m.name: m for m in members}
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.subscriptions = 0
        #: Member events handed to the subscription so far.
        self.pushed = 0

    async def subscribe(self) -> _FakeSubscription:
        self.subscriptions += 1
        return _FakeSubscription(self.queue)

    async def members(self) -> Sequence[Member]:
        return list(self.listed.values())

    async def close(self) -> None:
        return None

    def push(self, event: MemberEvent) -> None:
        """Deliver ``event`` as is (a late or duplicate delivery: the list is not changed)."""
        self.pushed += 1
        self.queue.put_nowait(event)

    def emit(self, kind: str, *members: Member) -> None:
        status = {"member-leave": "left", "member-failed": "failed"}.get(kind, "alive")
        for m in members:
            if kind == "member-reap":
                self.listed.pop(m.name, None)
            else:
                self.listed[m.name] = Member(m.name, m.addr, m.port, m.tags, status)
        self.push(MemberEvent(kind, tuple(members)))


def member(name: str, addr: str | None = None) -> Member:
    tags = {RPC_ADDR_TAG: addr or f"10.0.0.{len(name)}:8400"} if addr != "" else {}
    return Member(name=name, addr="127.0.0.1", port=7946, tags=tags, status="alive")


def config(**overrides: object) -> MembershipConfig:
    settings: dict[str, object] = {"node_name": "self", "failed_grace": 0.3}
    settings.update(overrides)
    return MembershipConfig(**settings)  # type: ignore[arg-type]


async def started(handler: RecordingHandler, source: FakeSource, **overrides: object) -> Membership:
    membership = Membership(config(**overrides), handler, source)
    await membership.start()
    await membership.wait_subscribed(2.0)
    return membership


async def drain(m: Membership, source: FakeSource) -> None:
    """Wait until the membership loop has finished applying every event pushed so far."""
    await wait_until(
        lambda: m.events_handled == source.pushed, 2.0, f"{source.pushed} events handled"
    )


def test_config_validation() -> None:
    with pytest.raises(MembershipConfigError, match="failed_grace"):
        config(failed_grace=-1).validate()
    with pytest.raises(MembershipConfigError, match="node_name"):
        config(node_name="").validate()
    with pytest.raises(MembershipConfigError, match="reconcile_interval"):
        config(reconcile_interval=0).validate()
    config().validate()


def test_parse_static_peers() -> None:
    assert parse_static_peers(["a=127.0.0.1:1", " b = h:2 "]) == {"a": "127.0.0.1:1", "b": "h:2"}
    for bad in ["a", "=h:1", "a=h", "a=:1"]:
        with pytest.raises(MembershipConfigError, match="id=host:port"):
            parse_static_peers([bad])
    with pytest.raises(MembershipConfigError, match="twice"):
        parse_static_peers(["a=h:1", "a=h:2"])


async def test_join_leave_duplicates_and_self_ignored() -> None:
    handler, source = RecordingHandler(), FakeSource()
    m = await started(handler, source)
    try:
        b = member("b", "127.0.0.1:9002")
        source.emit("member-join", b, member("self"))
        source.emit("member-join", b)  # duplicate
        source.emit("member-update", b)  # same address: nothing to do
        await drain(m, source)
        assert handler.calls == [("join", "b", "127.0.0.1:9002")]
        moved = member("b", "127.0.0.1:9999")
        source.emit("member-update", moved)
        source.emit("member-leave", b)
        source.emit("member-leave", b)  # duplicate
        source.emit("member-reap", b)  # already gone
        await drain(m, source)
        assert handler.calls[1:] == [("join", "b", "127.0.0.1:9999"), ("leave", "b")]
        assert handler.cluster == {"self": "127.0.0.1:1"}
    finally:
        await m.close()


async def test_out_of_order_events_follow_the_agents_current_list() -> None:
    """A stale event (a join delivered after the leave that followed it, or the reverse)
    changes nothing: the decision comes from the agent's member list as it is now."""
    handler, source = RecordingHandler(), FakeSource()
    m = await started(handler, source)
    try:
        b = member("b", "127.0.0.1:9002")
        source.emit("member-join", b)
        await wait_until(lambda: "b" in handler.cluster, 2.0, "b to join")
        source.emit("member-leave", b)
        await wait_until(lambda: "b" not in handler.cluster, 2.0, "b to be removed")
        source.push(MemberEvent("member-join", (b,)))  # late, list says left
        await drain(m, source)
        assert "b" not in handler.cluster
        assert handler.calls == [("join", "b", "127.0.0.1:9002"), ("leave", "b")]
        w = member("w")  # a witness: its failure, handled later, times the grace period
        source.emit("member-join", b, w)  # b really comes back
        await wait_until(lambda: {"b", "w"} <= set(handler.cluster), 2.0, "b and w to join")
        source.push(MemberEvent("member-leave", (b,)))  # late, list says alive
        source.push(MemberEvent("member-failed", (b,)))  # likewise
        await drain(m, source)
        assert "b" in handler.cluster and m.view["b"].status == "alive"
        # Had the late failure counted, b's grace (0.3 s) would end before w's does.
        source.emit("member-failed", w)
        await wait_until(lambda: "w" not in handler.cluster, 3.0, "w's grace to end")
        assert "b" in handler.cluster
        assert handler.calls.count(("leave", "b")) == 1
    finally:
        await m.close()


async def test_member_without_rpc_tag_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    handler, source = RecordingHandler(), FakeSource()
    m = await started(handler, source)
    try:
        with caplog.at_level(logging.WARNING):
            source.emit("member-join", member("untagged", ""))
            await drain(m, source)
            await wait_until(lambda: "no 'rpc_addr' tag" in caplog.text, 2.0, "the warning")
        assert handler.calls == []
    finally:
        await m.close()


async def test_failed_member_removed_after_grace_only() -> None:
    handler, source = RecordingHandler(), FakeSource()
    m = await started(handler, source, failed_grace=0.3)
    try:
        b, c, w = member("b"), member("c"), member("w")  # w: a witness that fails later
        source.emit("member-join", b, c, w)
        await wait_until(lambda: {"b", "c", "w"} <= set(handler.cluster), 2.0, "b, c, w to join")
        started_at = time.monotonic()
        source.emit("member-failed", b, c)
        await drain(m, source)
        assert ("leave", "b") not in handler.calls  # not before the grace period
        source.emit("member-join", c)  # c comes back in time: keeps its place
        await wait_until(lambda: "b" not in handler.cluster, 3.0, "b's grace to end")
        assert time.monotonic() - started_at >= 0.3
        # w fails after c did: once w's grace has ended, c's would have too.
        source.emit("member-failed", w)
        await wait_until(lambda: "w" not in handler.cluster, 3.0, "w's grace to end")
        assert "c" in handler.cluster
        assert ("leave", "c") not in handler.calls
        assert handler.calls.count(("leave", "b")) == 1
    finally:
        await m.close()


async def test_members_missing_after_agent_restart_get_the_failed_grace() -> None:
    """A restarted Serf agent lists only itself until its rejoin: the leader must not take
    that fresh list as every peer having left (it would remove the whole cluster)."""
    handler, source = RecordingHandler(), FakeSource()
    m = await started(handler, source, failed_grace=0.6, resubscribe_backoff=0.05)
    try:
        b, c = member("b"), member("c")
        source.emit("member-join", b, c)
        await wait_until(lambda: {"b", "c"} <= set(handler.cluster), 2.0, "b and c to join")
        # The agent restarts: its stream ends and its new member list knows nobody.
        source.listed = {"self": member("self")}
        subscriptions = source.subscriptions
        source.queue.put_nowait(None)
        await wait_until(
            lambda: source.subscriptions > subscriptions, 2.0, "membership to resubscribe"
        )
        await drain(m, source)
        assert not any(call[0] == "leave" for call in handler.calls)
        # It rejoins within the grace period: b comes back, c stays missing.
        source.emit("member-join", b)
        await wait_until(lambda: "c" not in handler.cluster, 3.0, "c's grace to end")
        # A witness that fails after the restart: once its grace has ended, b's would have.
        w = member("w")
        source.emit("member-join", w)
        await wait_until(lambda: "w" in handler.cluster, 2.0, "w to join")
        source.emit("member-failed", w)
        await wait_until(lambda: "w" not in handler.cluster, 3.0, "w's grace to end")
        assert "b" in handler.cluster
        assert handler.calls.count(("leave", "c")) == 1
        assert ("leave", "b") not in handler.calls
    finally:
        await m.close()


async def test_non_leader_keeps_view_and_reconciles_when_elected() -> None:
    handler, source = RecordingHandler(leader=False), FakeSource()
    m = await started(handler, source, failed_grace=0.0)
    try:
        source.emit("member-join", member("b"), member("c"))
        source.emit("member-failed", member("c"))
        await drain(m, source)
        assert handler.calls == []
        assert {n: x.status for n, x in m.view.items()} == {"b": "alive", "c": "failed"}
        handler.cluster["c"] = "10.0.0.1:8400"  # c is still in Raft from before
        handler.leader = True
        await m.reconcile()
        assert sorted(handler.calls) == [("join", "b", "10.0.0.1:8400"), ("leave", "c")]
    finally:
        await m.close()


async def test_handler_errors_are_retried_by_reconcile() -> None:
    handler, source = RecordingHandler(), FakeSource()
    handler.fail_next = 1
    m = await started(handler, source, reconcile_interval=0.2)
    try:
        source.emit("member-join", member("b"))
        await wait_until(lambda: "b" in handler.cluster, 3.0, "b to join")
        assert handler.calls.count(("join", "b", "10.0.0.1:8400")) == 2
        assert m.errors == 1
        source.emit("member-join", member("d"))  # the loop is still alive
        await wait_until(lambda: "d" in handler.cluster, 2.0, "d to join")
    finally:
        await m.close()


async def test_initial_member_list_is_reconciled_on_start() -> None:
    handler = RecordingHandler()
    handler.cluster["gone"] = "10.0.0.9:8400"
    handler.cluster["stranger"] = "10.0.0.8:8400"  # unknown to serf: left alone
    left = Member("gone", "127.0.0.1", 1, {RPC_ADDR_TAG: "10.0.0.9:8400"}, "left")
    source = FakeSource([member("b"), member("self"), left])
    m = await started(handler, source)
    try:
        await wait_until(lambda: "b" in handler.cluster, 2.0, "b to join")
        await wait_until(lambda: "gone" not in handler.cluster, 2.0, "gone to be removed")
        assert "stranger" in handler.cluster
        assert ("join", "self", "10.0.0.4:8400") not in handler.calls
    finally:
        await m.close()


async def test_static_membership_joins_peers_on_the_leader() -> None:
    handler = RecordingHandler(leader=False)
    peers = parse_static_peers(["self=127.0.0.1:1", "b=127.0.0.1:2", "c=127.0.0.1:3"])
    m = StaticMembership(config(reconcile_interval=0.1), handler, peers)
    await m.start()
    try:
        # the first reconcile and one periodic one have asked, and done nothing
        await wait_until(lambda: handler.leader_checks >= 2, 2.0, "two reconcile passes")
        assert handler.calls == []  # not the leader: nothing
        handler.leader = True
        await wait_until(lambda: {"b", "c"} <= set(handler.cluster), 2.0, "b and c to join")
        assert sorted(handler.calls) == [("join", "b", "127.0.0.1:2"), ("join", "c", "127.0.0.1:3")]
    finally:
        await m.close()


async def test_membership_with_real_serf(make_agent: AgentFactory) -> None:
    a = await make_agent("a")
    handler = RecordingHandler(local="a")
    source = SerfMemberSource(a.connect, timeout=5.0)
    m = Membership(MembershipConfig(node_name="a", failed_grace=30.0), handler, source)
    await m.start()
    try:
        await m.wait_subscribed(5.0)
        b = await make_agent("b", start_join_addrs=(a.config.bind_addr,))
        await wait_until(lambda: "b" in handler.cluster, 15.0, "b to join")
        assert handler.cluster["b"] == b.config.advertise_rpc_addr
        await b.stop()
        await wait_until(lambda: "b" not in handler.cluster, 15.0, "b to be removed")
        assert handler.calls == [("join", "b", b.config.advertise_rpc_addr), ("leave", "b")]
    finally:
        await m.close()


async def test_membership_resubscribes_after_agent_restart(make_agent: AgentFactory) -> None:
    import os
    import signal

    a = await make_agent("a")
    handler = RecordingHandler(local="a")
    m = Membership(
        MembershipConfig(node_name="a", resubscribe_backoff=0.1, resubscribe_backoff_max=0.5),
        handler,
        SerfMemberSource(a.connect, timeout=3.0),
    )
    await m.start()
    try:
        await m.wait_subscribed(5.0)
        assert a.pid is not None
        os.kill(a.pid, signal.SIGKILL)
        await a.wait_running(15.0)
        await m.wait_subscribed(10.0)
        b = await make_agent("b", start_join_addrs=(a.config.bind_addr,))
        await wait_until(lambda: "b" in handler.cluster, 15.0, "b to join")
        assert handler.cluster["b"] == b.config.advertise_rpc_addr
    finally:
        await m.close()


async def test_a_member_is_joined_only_once_authenticated(caplog: pytest.LogCaptureFixture) -> None:
    """The membership check runs before every join; a refusal is counted, logged and
    audited once, and the member is added as soon as it passes (docs/security.md)."""
    handler, source = RecordingHandler(), FakeSource()
    genuine: set[str] = set()
    probes: list[tuple[str, str]] = []
    audited: list[dict[str, object]] = []

    async def authenticate(node_id: str, rpc_addr: str) -> None:
        probes.append((node_id, rpc_addr))
        if node_id not in genuine:
            raise PermissionError(f"{rpc_addr} is node 'x', not {node_id!r}")

    class Audit:
        def record(self, event: str, **fields: object) -> None:
            audited.append({"event": event, **fields})

    m = Membership(config(reconcile_interval=0.2), handler, source)
    m.authenticate = authenticate
    m.audit = Audit()  # type: ignore[assignment]
    await m.start()
    await m.wait_subscribed(2.0)
    try:
        with caplog.at_level(logging.WARNING, logger="raftlog.discovery.membership"):
            source.emit("member-join", member("rogue", "127.0.0.1:1"))
            await drain(m, source)
            assert m.refused == 1 and handler.calls == []
            source.emit("member-update", member("rogue", "127.0.0.1:1"))  # within the pause
            await drain(m, source)
            assert probes == [("rogue", "127.0.0.1:1")]  # not probed again at once
            await wait_until(lambda: m.refused >= 2, 5.0, "a reconcile to probe it again")
        assert handler.calls == []
        assert [r.getMessage() for r in caplog.records].count(
            "membership: refused member rogue at 127.0.0.1:1: 127.0.0.1:1 is node 'x', not "
            "'rogue' (it is not added to Raft)"
        ) == 1
        assert [(a["subject"], a["decision"]) for a in audited] == [("rogue", "refused")]
        genuine.add("rogue")  # it proves itself now (its port came up, say)
        await wait_until(lambda: bool(handler.calls), 5.0, "the join once it passes")
        assert handler.calls == [("join", "rogue", "127.0.0.1:1")]
        assert audited[-1]["decision"] == "added" and m.refusals == {}
    finally:
        await m.close()
