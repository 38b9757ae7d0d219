"""Traces: one produce sent to a follower is one trace across both nodes.

Two in-process agents (static peers) trace into one in-memory exporter, each with its own
tracer provider (its resource names the node). A Produce to the follower makes: the
follower's server span, its forward span, the leader's server span (a child of the
forward, through the ``traceparent`` header of the forwarded call), the leader's
propose-to-commit span and its apply span.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from raftlog.agent import Agent
from raftlog.agent.devcluster import free_port
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import write_example_acl
from raftlog.config import AgentConfig
from raftlog.security import CertFiles, TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from raftlog.telemetry import build_tracer_provider
from support.cluster_files import agent_tls
from support.wait import wait_until

pytestmark = pytest.mark.timeout(60)


def _config(
    root: Path, certs: dict[str, CertFiles], name: str, peers: str, **kw: object
) -> AgentConfig:
    server = certs["server"]
    port = int(peers.split(f"{name}=127.0.0.1:")[1].split(",", maxsplit=1)[0])
    return AgentConfig(
        data_dir=root / name,
        node_name=name,
        rpc_port=port,
        bind_addr="127.0.0.1:0",
        peers=tuple(peers.split(",")),
        acl_model_file=root / "acl" / "model.conf",
        acl_policy_file=root / "acl" / "policy.csv",
        **agent_tls(server),
        sync="never",
        **kw,  # type: ignore[arg-type]
    )


def _node_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.instance.id"])


async def test_a_forwarded_produce_is_one_trace_across_two_nodes(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    write_example_acl(tmp_path / "acl")
    names = ("t1", "t2")
    peers = ",".join(f"{n}=127.0.0.1:{free_port()}" for n in names)
    exporter = InMemorySpanExporter()
    agents = {
        n: Agent(
            _config(tmp_path, dev_certs, n, peers, bootstrap=n == "t1"),
            tracer_provider=build_tracer_provider(n, exporter=exporter, batch=False),
        )
        for n in names
    }
    root = dev_certs["root"]
    credentials = grpc_channel_credentials(TLSConfig(root.cert_file, root.key_file, root.ca_file))
    try:
        for agent in agents.values():
            await agent.start()

        def formed() -> bool:
            for agent in agents.values():
                node = agent.cluster.node if agent.cluster else None
                if node is None or not node.leader_id or len(node.membership.voters) < 2:
                    return False
            return True

        await wait_until(formed, 30, "a 2-voter cluster with a leader")
        leader = next(
            n
            for n, a in agents.items()
            if a.cluster and a.cluster.dlog and a.cluster.dlog.is_leader()
        )
        follower = next(n for n in names if n != leader)
        exporter.clear()
        async with grpc.aio.secure_channel(agents[follower].rpc_addr, credentials) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            await stub.Produce(
                log_pb2.ProduceRequest(records=[log_pb2.Record(value=b"traced")]), timeout=10
            )

        def spans() -> list[ReadableSpan]:
            return [
                s for s in exporter.get_finished_spans() if s.name != "grpc.health.v1.Health/Check"
            ]

        await wait_until(
            lambda: sum(s.name == "log.v1.Log/Produce" for s in spans()) == 2,
            10,
            "both nodes' Produce spans",
        )
        got = spans()
        assert len({s.context.trace_id for s in got}) == 1, [(s.name, _node_of(s)) for s in got]
        by = {(s.name, _node_of(s)): s for s in got}
        outer = by["log.v1.Log/Produce", follower]
        forward = by["raftlog.forward", follower]
        inner = by["log.v1.Log/Produce", leader]
        propose = by["raftlog.raft.propose", leader]
        apply = by["raftlog.raft.apply", leader]
        assert outer.parent is None and outer.kind is SpanKind.SERVER
        assert outer.attributes is not None
        assert dict(outer.attributes) == {
            "rpc.system": "grpc",
            "rpc.service": "log.v1.Log",
            "rpc.method": "Produce",
            "rpc.grpc.status_code": 0,
        }
        assert forward.parent is not None and forward.parent.span_id == outer.context.span_id
        assert forward.kind is SpanKind.CLIENT
        # the hop: the leader's server span continues the follower's trace
        assert inner.parent is not None and inner.parent.span_id == forward.context.span_id
        assert inner.parent.is_remote
        assert propose.parent is not None and propose.parent.span_id == inner.context.span_id
        assert apply.parent is not None and apply.parent.span_id == propose.context.span_id
        assert propose.start_time is not None and apply.start_time is not None
        assert propose.end_time is not None and apply.end_time is not None
        assert propose.start_time <= apply.start_time <= apply.end_time <= propose.end_time
        assert {_node_of(s) for s in got} == {leader, follower}
    finally:
        for agent in agents.values():
            await agent.shutdown()
