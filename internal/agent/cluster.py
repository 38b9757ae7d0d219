"""The cluster steps of the agent: mux -> raft (log + DistributedLog) -> server -> membership.

::

    mux         remove dead agents' socket dirs; bind --rpc-port; Raft marker ->
                TcpTransport (peer mTLS, Casbin replicate); anything else -> grpc.aio on
                a unix socket in a 0700 dir named after this pid      -> close, rm dir
    raft        CommitLogFSM (data_dir/fsm) + RaftNode (data_dir/raft) on the default
                group of a GroupRouter over TcpTransport (raft/groups.py); --bootstrap
                once (never when Raft state exists); DistributedLog
                                              -> close log, node, router (transport), fsm
    topics      the controller group (data_dir/controller) and a PartitionHost for every
                other partition on the same router; the topics loop (liveness, controller
                membership, reconcile, moves, leader balance: distributed/topics.py)
                                              -> stop the loop, close replicas, controller
    server      log.v1.Log on the unix socket (client mTLS + ACL, end to end through the
                mux); followers forward Produce to the leader     -> drain, stop
    membership  Serf agent subprocess + Membership (or StaticMembership); peer address
                hints from Serf tags; reconcile on becoming leader; with --join-dns a
                task resolves and joins, and ordinal 0 may bootstrap (agent/dns_join.py)
                                  -> leader hands over, Serf leaves gracefully, reaped

Each ``setup_*`` returns its teardown; :class:`raftlog.agent.Agent` runs them in order and
tears down in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from opentelemetry import trace

from raftlog.agent.dns_join import run_dns_join
from raftlog.agent.http_step import HTTP_ADDR_TAG, start_http_api
from raftlog.agent.identity import (
    CLUSTER_ID_TAG,
    Identity,
    check_cluster,
    claim,
    new_cluster_id,
    write_identity,
)
from raftlog.api.contract import OBJECT_WILDCARD, Action
from raftlog.config import AgentConfig
from raftlog.discovery import (
    RPC_ADDR_TAG,
    Member,
    Membership,
    MembershipConfig,
    SerfAgent,
    SerfAgentConfig,
    SerfMemberSource,
    StaticMembership,
    parse_static_peers,
)
from raftlog.distributed import CommitLogFSM, DistributedConfig, DistributedLog
from raftlog.distributed.partition_host import HostSettings, PartitionHost
from raftlog.distributed.scrub import ScrubConfig
from raftlog.distributed.topics import Topics, TopicsConfig, default_forwarder_factory
from raftlog.domain.protocols import Authorizer
from raftlog.log import LogConfig
from raftlog.log.config import INDEX_ENTRY_BYTES
from raftlog.mux import RAFT_MARKER, Mux, MuxConfig, PrivateSocketDir, remove_stale_socket_dirs
from raftlog.raft import NO_METRICS, RaftConfig, RaftError, Server
from raftlog.raft.groups import DEFAULT_GROUP, GroupRouter
from raftlog.raft.node import (
    AGENT_COMMIT_BROADCAST_DELAY,
    NodeClosedError,
    NodeConfig,
    RaftNode,
    WaitTimeoutError,
)
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import TLSConfig, peer_common_name
from raftlog.security.denylist import DenyList
from raftlog.security.grpc_tls import grpc_dynamic_server_credentials
from raftlog.security.peer_identity import names_node
from raftlog.security.reload import ReloadableTLS
from raftlog.server import LogServer, ServerConfig
from raftlog.server.admin import AdminService
from raftlog.server.forward import ForwardMarkInterceptor, GrpcForwarder
from raftlog.server.http_api import HttpApi
from raftlog.server.revocation import RevocationInterceptor
from raftlog.server.topics import ClusterService, TopicAdmin
from raftlog.telemetry import NO_AUDIT, AuditSink, NodeMetrics
from raftlog.telemetry.budget import LatencyBudget

logger = logging.getLogger("raftlog.agent")

Teardown = Callable[[], Awaitable[None]]

#: How often the membership step refreshes peer address hints and watches leadership (s).
WATCH_INTERVAL = 0.25
#: With sync=interval, seconds between two fsyncs of the Raft log.
INTERVAL_SYNC = 0.2
#: Bound of the leadership hand-over a leaving leader attempts (s).
TRANSFER_TIMEOUT = 3.0
#: Seconds between the liveness pings to each peer (raft/groups.py): one per node pair
#: stands for every quiet group's heartbeats; a peer silent for 2 s is reported down and
#: the quiet groups it led wake up and elect.
LIVENESS_INTERVAL = 0.5
#: Idle ticks (50 ms each) after which a partition's leader quiets its group: an idle
#: partition then sends nothing (docs/raft.md, "Quiescence"). The default partition does
#: not quiet: its latency path stays as it is.
QUIESCE_TICKS = 3


def segment_config(segment_bytes: int) -> LogConfig:
    """The commit log's settings for ``--segment-bytes``: stores roll at that size; the
    index holds one entry per 16 bytes of store (the default's ratio: 64 MiB -> 32 MiB)."""
    entries = max(1, segment_bytes // 16)
    return LogConfig(max_store_bytes=segment_bytes, max_index_bytes=INDEX_ENTRY_BYTES * entries)


def _same_pem(a: Path, b: Path) -> bool:
    """Whether two CA files hold the same certificates (same path or same bytes)."""
    try:
        return (
            Path(a).resolve() == Path(b).resolve() or Path(a).read_bytes() == Path(b).read_bytes()
        )
    except OSError:
        return False  # validation names the unreadable file


async def _no_disk_usage() -> int:
    return 0


def gossip_key(config: AgentConfig) -> str | None:
    """The Serf gossip key: --serf-encrypt-key, else the content of
    --serf-encrypt-key-file, else None (gossip in clear text)."""
    if config.serf_encrypt_key:
        return config.serf_encrypt_key
    if config.serf_encrypt_key_file:
        return Path(config.serf_encrypt_key_file).read_text().strip() or None
    return None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterNode:
    """The parts of one cluster member, built step by step from an :class:`AgentConfig`.

    ``metrics`` and ``tracer`` (None: off) are handed to the parts that report to them;
    ``disk_usage`` measures the data directory for the admin Status call.
    """

    def __init__(
        self,
        config: AgentConfig,
        authorizer: Authorizer,
        *,
        metrics: NodeMetrics | None = None,
        tracer: trace.Tracer | None = None,
        disk_usage: Callable[[], Awaitable[int]] | None = None,
        budget: LatencyBudget | None = None,
        deny_list: DenyList | None = None,
    ) -> None:
        if config.insecure:
            raise ValueError(
                "cluster mode needs TLS: peers authenticate each other with certificates "
                "(insecure mode runs a single node only)"
            )
        self.config = config
        self.authorizer = authorizer
        self.metrics = metrics
        self.tracer = tracer
        self.disk_usage = disk_usage or _no_disk_usage
        #: The latency budget (debug, ``latency_budget``): given to the server and the node.
        self.budget = budget
        peer_ca, server_ca = config.peer_tls_ca_file, config.server_tls_ca_file
        distinct = not _same_pem(peer_ca, server_ca)
        #: Raft connections: peer certificates only, verified against the peer CA.
        self.peer_tls = TLSConfig(config.peer_tls_cert_file, config.peer_tls_key_file, peer_ca)
        #: The gRPC server meets clients (server CA) and forwarding peers (peer CA).
        self.server_tls = TLSConfig(
            config.server_tls_cert_file,
            config.server_tls_key_file,
            server_ca,
            extra_ca_files=(peer_ca,) if distinct else (),
        )
        #: Forwarded writes: a peer certificate towards the leader's gRPC server, whose
        #: certificate the server CA signed.
        self.forward_tls = dataclasses.replace(
            self.peer_tls, extra_ca_files=(server_ca,) if distinct else ()
        )
        #: Revocation (checked on Raft handshakes, gRPC calls and HTTP requests).
        self.deny_list = deny_list or DenyList()
        #: The reloadable TLS material by role ("server", "peer", "forward"), loaded by
        #: the mux step (see :meth:`reload_tls`).
        self.materials: dict[str, ReloadableTLS] = {}
        self.forwarder: GrpcForwarder | None = None
        self.transport: TcpTransport | None = None
        #: shares the transport between the node's Raft groups (raftlog.raft.groups)
        self.router: GroupRouter | None = None
        self.sockdir: PrivateSocketDir | None = None
        self.mux: Mux | None = None
        self.fsm: CommitLogFSM | None = None
        self.node: RaftNode | None = None
        self.dlog: DistributedLog | None = None
        #: topics and partitions beyond the default one (the topics step)
        self.topics: Topics | None = None
        #: set when this start bootstrapped a new cluster (the controller group starts too)
        self.bootstrapped = False
        self.server: LogServer | None = None
        self.serf: SerfAgent | None = None
        self.membership: Membership | StaticMembership | None = None
        self._watch: asyncio.Task[None] | None = None
        self.identity = Identity(config.node_name)
        self.http_api: HttpApi | None = None
        self._dns_join: asyncio.Task[bool] | None = None
        #: The audit log (docs/security.md); the agent's audit step sets it when
        #: --audit-log is given, before the server and membership steps run.
        self.audit: AuditSink = NO_AUDIT

    def serf_view(self) -> Mapping[str, Member] | None:
        """Serf's view of the members (None without Serf: static peers, or not started)."""
        membership = self.membership
        return membership.view if isinstance(membership, Membership) else None

    @property
    def rpc_addr(self) -> str:
        """HOST:PORT of the mux (gRPC and Raft), once the mux step ran."""
        if self.mux is None:
            return self.config.rpc_addr
        return _host_port(self.config.bind_host, self.mux.port)

    # -- TLS reload --------------------------------------------------------------------

    def load_tls(self) -> None:
        """Load and check the TLS files of every role (raises TLSReloadError if bad)."""
        self.materials = {
            "server": ReloadableTLS(self.server_tls, "server"),
            "peer": ReloadableTLS(self.peer_tls, "peer"),
            # the peer certificate again (with the server CA): reported as "peer"
            "forward": ReloadableTLS(self.forward_tls, "forward", warn=False),
        }

    def reload_tls(self) -> list[str]:
        """Read every role's TLS files again (SIGHUP); the roles now on new material.

        New handshakes of the gRPC server, the mux (Raft), the HTTP API, the Raft dialer
        and the forwarder use it; open connections stay. Bad files change nothing."""
        return [name for name, material in self.materials.items() if material.reload()]

    def recheck_peers(self) -> int:
        """After an ACL or deny list reload: close the open Raft connections whose peer
        is now refused (they redial, and the handshake refuses them); how many."""
        return self.transport.recheck() if self.transport is not None else 0

    def certificate_expiry(self) -> dict[str, float]:
        """Seconds until expiry of each certificate this node presents and of its CAs."""
        found: dict[str, float] = {}
        for name in ("server", "peer"):
            if name in self.materials:
                found.update(self.materials[name].expiry_seconds())
        return found

    # -- mux ---------------------------------------------------------------------------

    async def setup_mux(self) -> Teardown:
        """Bind the one port; gRPC goes to a private unix socket (served by a later step).

        First removes the socket directories that SIGKILLed agents left behind (only
        those whose owner process is gone: :func:`remove_stale_socket_dirs`)."""
        self.load_tls()
        stale = await asyncio.to_thread(remove_stale_socket_dirs)
        if stale:
            logger.info(
                "removed %d socket directories of agents that are gone: %s",
                len(stale),
                ", ".join(str(p) for p in stale),
            )
        self.sockdir = PrivateSocketDir()
        sockdir = self.sockdir
        mux = Mux(
            MuxConfig(host=self.config.bind_host, port=self.config.rpc_port),
            grpc_socket=sockdir.path,
        )
        try:
            await mux.start()
        except BaseException:
            sockdir.cleanup()
            raise
        self.mux = mux
        logger.info("mux listening on %s (gRPC and Raft)", self.rpc_addr)

        async def stop() -> None:
            try:
                await mux.close()
            finally:
                sockdir.cleanup()

        return stop

    # -- raft --------------------------------------------------------------------------

    def _authorize_peer(self, subject: str) -> bool:
        allowed = self.authorizer.authorize(subject, OBJECT_WILDCARD, Action.REPLICATE)
        if not allowed:
            logger.warning(
                "refused Raft traffic from %r: the ACL does not allow replicate", subject
            )
        return allowed

    async def setup_raft(self) -> Teardown:
        """Open the commit log (FSM) and the Raft node; bootstrap once; DistributedLog."""
        assert self.mux is not None, "the mux step runs first"
        config = self.config
        self.identity = await asyncio.to_thread(claim, config.data_dir, config.node_name)
        fsm = await asyncio.to_thread(
            CommitLogFSM.open, config.data_dir / "fsm", segment_config(config.segment_bytes)
        )
        self.fsm = fsm
        transport = TcpTransport(
            TcpTransportConfig(
                node_id=config.node_name,
                tls=self.peer_tls,
                server_hostname=config.peer_tls_server_name or None,
            ),
            authorize=self._authorize_peer,
        )
        self.transport = transport
        transport.audit = self.audit
        peer = self.materials["peer"]
        transport.check_certificate = self.deny_list.refuses_peercert
        transport.set_contexts(server=peer.server_context, client=peer.client_context())
        peer.on_reload(lambda new: transport.set_contexts(client=new.client))
        # The node's Raft groups share the transport through a router; today there is one,
        # the default partition's (group "", no envelope: the wire of earlier versions).
        router = GroupRouter(transport, liveness_interval=LIVENESS_INTERVAL)
        self.router = router
        try:  # opening the disk stores may fail (as start() may): close the FSM then
            node = await RaftNode.on_disk(
                NodeConfig(
                    raft=RaftConfig(
                        id=config.node_name,
                        snapshot_threshold=config.snapshot_threshold,
                        # keep up to half a snapshot interval (at most 1024) of entries behind
                        # a snapshot, so a slightly late follower catches up from the log
                        snapshot_trailing_entries=min(1024, config.snapshot_threshold // 2),
                        # memory and the Raft log on disk are bounded in bytes too: a
                        # snapshot every snapshot_bytes, a quarter of that (at most 8 MiB)
                        # kept behind it for slow followers
                        snapshot_bytes=config.snapshot_bytes,
                        snapshot_trailing_bytes=min(8 << 20, config.snapshot_bytes // 4),
                    ),
                    data_dir=config.data_dir / "raft",
                    # a snapshot only references the commit log: one is enough, and a
                    # received catch-up (which carries records) goes as soon as a local
                    # snapshot replaces it
                    snapshot_retain=1,
                    # interval: rounds do not wait for fsync; _interval_sync flushes the Raft log
                    fsync=config.sync == "always",
                    request_timeout=10.0,
                    disk_full_retry_delay=config.disk_full_retry_s,
                    # followers learn a commit with the next write (or heartbeat), at most
                    # 5 ms late: two messages fewer per follower per write (docs/performance.md)
                    commit_broadcast_delay=AGENT_COMMIT_BROADCAST_DELAY,
                ),
                fsm,
                router.group(DEFAULT_GROUP),
                peers=parse_static_peers(config.peers) if config.peers else None,
                metrics=self.metrics if self.metrics is not None else NO_METRICS,
            )
        except BaseException:
            await router.close()
            await fsm.close()
            raise
        self.mux.register(
            RAFT_MARKER, transport.handle_connection, ssl_context=transport.server_context
        )
        try:
            await node.start()
        except BaseException:
            await router.close()
            await fsm.close()
            raise
        self.node = node
        node.budget = self.budget
        forwarder = GrpcForwarder(
            self.forward_tls,
            server_hostname=config.peer_tls_server_name or None,
            max_request_bytes=ServerConfig(
                max_message_bytes=config.max_message_bytes
            ).transport_limit_bytes,
        )
        self.forwarder = forwarder
        self.materials["forward"].on_reload(lambda _new: forwarder.reload_tls())
        dlog = DistributedLog(
            node,
            fsm,
            forwarder=forwarder,
            config=DistributedConfig(
                retention_bytes=config.retention_bytes,
                retention_age_s=config.retention_age,
                checkpoint_hash_interval=config.checkpoint_hash_interval,
                scrub=ScrubConfig(
                    rate_bytes_s=config.scrub_rate_mb_s * 1e6,
                    pass_interval_s=config.scrub_interval,
                ),
            ),
            observer=self.metrics,
            tracer=self.tracer,
            fetcher=forwarder,
        )
        self.dlog = dlog
        dlog.audit = self.audit
        dlog.start()
        syncer = None
        if config.sync == "interval":
            syncer = asyncio.create_task(self._interval_sync(node), name="raft-interval-sync")

        async def stop() -> None:
            if syncer is not None:
                syncer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await syncer
            try:
                await dlog.close()
                await node.close()  # detaches its group from the router
            finally:
                try:
                    await router.close()  # and the transport under it
                finally:
                    await fsm.close()

        try:
            await self._bootstrap_once(node)
        except BaseException:
            await stop()
            raise
        logger.info(
            "raft node %s up: term %d, commit %d, log offsets %d..%d",
            node.id,
            node.term,
            node.commit_index,
            dlog.lowest_offset,
            dlog.highest_offset,
            extra={"term": node.term, "index": node.commit_index, "offset": dlog.highest_offset},
        )
        return stop

    async def _interval_sync(self, node: RaftNode) -> None:
        """sync=interval: fsync the Raft log every INTERVAL_SYNC seconds (acknowledged
        entries survive a process crash at once and an OS crash after at most that long;
        term and vote are written without fsync in this mode)."""
        while True:
            await asyncio.sleep(INTERVAL_SYNC)
            try:
                await node.log_store.flush()
            except Exception as exc:  # closed during shutdown, or a failing disk: say so
                logger.warning("interval fsync of the Raft log failed: %s", exc)

    async def _bootstrap_once(self, node: RaftNode) -> None:
        config = self.config
        if not config.bootstrap:
            return
        if node.has_state():
            logger.info(
                "--bootstrap ignored: node %s already has Raft state in %s (a restart never "
                "bootstraps again)",
                node.id,
                config.data_dir / "raft",
            )
            return
        await node.bootstrap([Server(node.id, self.rpc_addr)])
        self.bootstrapped = True
        await self._record_cluster(new_cluster_id())
        logger.info(
            "bootstrapped a new cluster %s with %s at %s",
            self.identity.cluster_id,
            node.id,
            self.rpc_addr,
        )

    async def _record_cluster(self, cluster_id: str) -> None:
        """This data directory now belongs to cluster ``cluster_id`` (docs/cluster.md)."""
        self.identity = Identity(self.identity.node_id, cluster_id)
        await asyncio.to_thread(write_identity, self.config.data_dir, self.identity)
        if isinstance(self.membership, Membership):
            self.membership.cluster_id = cluster_id
        logger.info("node %s belongs to cluster %s", self.identity.node_id, cluster_id)

    # -- topics ------------------------------------------------------------------------

    def members(self) -> dict[str, str]:
        """Node id -> rpc address of every member (the default group's membership)."""
        node = self.node
        if node is None:
            return {}
        return {s.id: s.address for s in node.membership}

    def member_alive(self, node_id: str) -> bool | None:
        """Serf's view of a member: alive or not (None: no opinion). Without Serf (static
        peers), the Raft transport's liveness pings decide: a peer silent for 2 s is down
        until it is heard again."""
        view = self.serf_view()
        if view is None:
            router = self.router
            return False if router is not None and node_id in router.down else None
        member = view.get(node_id)
        return None if member is None else member.status == "alive"

    async def setup_topics(self) -> Teardown:
        """The controller group and the other partitions' replicas (docs/partitions.md)."""
        assert self.router is not None and self.dlog is not None
        config = self.config
        fsync = config.sync == "always"
        controller_node = NodeConfig(
            raft=RaftConfig(
                id=config.node_name, snapshot_threshold=1024, quiesce_after_ticks=QUIESCE_TICKS
            ),
            data_dir=config.data_dir / "controller",
            # a few small entries per topic or node change: durable unless --sync never
            fsync=config.sync != "never",
            request_timeout=10.0,
            snapshot_retain=2,
        )
        replica_node = NodeConfig(
            raft=RaftConfig(
                id=config.node_name,
                snapshot_threshold=config.snapshot_threshold,
                quiesce_after_ticks=QUIESCE_TICKS,
            ),
            fsync=fsync,
            request_timeout=10.0,
            snapshot_retain=1,
            disk_full_retry_delay=config.disk_full_retry_s,
            commit_broadcast_delay=AGENT_COMMIT_BROADCAST_DELAY,
        )
        forwarder = self.forwarder
        host = PartitionHost(
            config.node_name,
            config.data_dir,
            self.router,
            HostSettings(
                node=replica_node,
                segment=segment_config(config.segment_bytes),
                # the default partition's integrity settings (a topic's own retention is
                # added per replica)
                distributed=DistributedConfig(
                    checkpoint_hash_interval=config.checkpoint_hash_interval,
                    scrub=ScrubConfig(
                        rate_bytes_s=config.scrub_rate_mb_s * 1e6,
                        pass_interval_s=config.scrub_interval,
                    ),
                ),
            ),
            forwarder_for=default_forwarder_factory(forwarder),
        )
        topics = Topics(
            node_id=config.node_name,
            rpc_addr=lambda: self.rpc_addr,
            data_dir=config.data_dir,
            router=self.router,
            controller_node=controller_node,
            host=host,
            default=self.dlog,
            members=self.members,
            alive=self.member_alive,
            peers=forwarder,
            config=TopicsConfig(
                controller_voters=config.controller_voters,
                grace_s=config.replica_grace_s,
                flush_interval_s=INTERVAL_SYNC if config.sync == "interval" else 0.0,
            ),
        )
        await topics.start(bootstrap=self.bootstrapped)
        self.topics = topics
        return topics.close

    # -- server ------------------------------------------------------------------------

    async def setup_server(self) -> Teardown:
        """grpc.aio ``log.v1.Log`` on the mux's unix socket, TLS end to end."""
        assert self.dlog is not None and self.sockdir is not None
        server = LogServer(
            self.dlog,
            self.dlog,
            self.authorizer,
            tls=self.server_tls,
            config=ServerConfig(max_message_bytes=self.config.max_message_bytes),
            extra_interceptors=[
                RevocationInterceptor(self.deny_list),
                ForwardMarkInterceptor(self.authorizer),
            ],
            metrics=self.metrics,
            tracer=self.tracer,
            admin=AdminService(
                self.dlog,
                lambda: self.rpc_addr,
                self.disk_usage,
                topics=TopicAdmin(self.topics) if self.topics is not None else None,
            ),
            audit=self.audit,
            budget=self.budget,
            partitions=self.topics,
            cluster=ClusterService(self.topics) if self.topics is not None else None,
        )
        bound = server.server.add_secure_port(
            self.sockdir.address,
            grpc_dynamic_server_credentials(self.materials["server"].grpc_material),
        )
        if bound == 0:
            raise OSError(f"cannot listen on {self.sockdir.address}")
        self.server = server
        await server.start()
        grace = max(self.config.shutdown_timeout_s / 2, 0.1)
        logger.info(
            "node %s serving log.v1.Log on %s (mutual TLS, Casbin ACL, behind the mux)",
            self.config.node_name,
            self.rpc_addr,
        )

        health = asyncio.create_task(self._watch_health(server), name="health-watch")

        async def stop() -> None:
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            if self.dlog is not None:
                self.dlog.begin_close()
            await server.stop(grace)

        return stop

    async def _watch_health(self, server: LogServer) -> None:
        """Health NOT_SERVING once the Raft node stopped (a failed disk): it takes no
        writes and acknowledges nothing until it is restarted."""
        node = self.node
        assert node is not None
        while True:
            try:
                failure = await node.wait_failure(3600.0)
                break
            except WaitTimeoutError:
                continue
            except NodeClosedError:
                return
        logger.error("node %s reports NOT_SERVING: %s", self.config.node_name, failure)
        await server.set_serving(False)

    # -- http --------------------------------------------------------------------------

    async def setup_http(self) -> Teardown:
        """The HTTP/JSON API (same TLS and ACL); its address becomes a Serf tag."""
        assert self.dlog is not None
        self.http_api, stop = await start_http_api(
            self.config,
            commit_log=self.dlog,
            servers=self.dlog,
            authorizer=self.authorizer,
            tls=self.server_tls,
            peer_http_addrs=self.peer_http_addrs,
            audit=self.audit,
            ssl_context=self.materials["server"].server_context,
            check_certificate=self.deny_list.refuses_peercert,
            partitions=self.topics,
        )
        return stop

    def _serf_tags(self) -> dict[str, str]:
        """This node's Serf tags beyond its rpc address: its cluster id (once known) and
        its HTTP API address (when served)."""
        tags: dict[str, str] = {}
        if self.identity.cluster_id:
            tags[CLUSTER_ID_TAG] = self.identity.cluster_id
        if self.http_addr:
            tags[HTTP_ADDR_TAG] = self.http_addr
        return tags

    @property
    def http_addr(self) -> str:
        """HOST:PORT of this node's HTTP API ("" when it is off)."""
        if self.http_api is None or self.http_api.port is None:
            return ""
        return _host_port(self.config.bind_host, self.http_api.port)

    def peer_http_addrs(self) -> dict[str, str]:
        """Node id -> HTTP address of the live members that serve one (Serf tags)."""
        found = {self.config.node_name: self.http_addr} if self.http_addr else {}
        if isinstance(self.membership, Membership):
            for name, m in self.membership.view.items():
                if HTTP_ADDR_TAG in m.tags and m.status == "alive":
                    found[name] = m.tags[HTTP_ADDR_TAG]
        return found

    # -- membership ----------------------------------------------------------------------

    async def setup_membership(self) -> Teardown:
        """Serf (or the static peer list) drives join/leave on the leader."""
        assert self.dlog is not None and self.node is not None
        config = self.config
        mconfig = MembershipConfig(node_name=config.node_name, failed_grace=config.failed_grace_s)
        if config.peers:
            static = StaticMembership(mconfig, self.dlog, parse_static_peers(config.peers))
            self.membership = static
            await static.start()
            self._watch = asyncio.create_task(self._watch_leadership(), name="membership-watch")
            return self._stop_membership
        encrypt_key = await asyncio.to_thread(gossip_key, config)
        if encrypt_key is None:
            logger.warning(
                "gossip is neither encrypted nor authenticated: no --serf-encrypt-key or "
                "--serf-encrypt-key-file (`raftlog cert` writes gossip.key). Members are still "
                "added only after a peer mTLS handshake (docs/security.md)"
            )
        serf = SerfAgent(
            SerfAgentConfig(
                node_name=config.node_name,
                bind_addr=config.bind_addr,
                rpc_addr=config.serf_rpc,
                advertise_rpc_addr=self.rpc_addr,
                tags=self._serf_tags(),
                encrypt_key=encrypt_key,
                start_join_addrs=config.start_join_addrs,
                profile=config.serf_profile,
                log_level="warn" if config.log_level in ("warning", "error") else "info",
            )
        )
        await serf.start()
        self.serf = serf
        try:
            await self._check_cluster(serf)
        except BaseException:
            await serf.stop()
            raise
        membership = Membership(mconfig, self.dlog, SerfMemberSource(serf.connect))
        membership.cluster_id = self.identity.cluster_id
        membership.cluster_tag = CLUSTER_ID_TAG
        membership.authenticate = self.authenticate_member
        membership.audit = self.audit
        self.membership = membership
        try:
            await membership.start()
        except BaseException:
            await serf.stop()
            raise
        self._watch = asyncio.create_task(self._watch_leadership(), name="membership-watch")
        if config.join_dns:
            self._dns_join = asyncio.create_task(
                run_dns_join(config, serf, self.node, self.rpc_addr), name="dns-join"
            )
        logger.info(
            "serf agent %s: gossip %s, rpc %s%s",
            config.node_name,
            config.bind_addr,
            config.serf_rpc,
            f", joining {', '.join(config.start_join_addrs)}" if config.start_join_addrs else "",
        )
        return self._stop_membership

    async def authenticate_member(self, node_id: str, rpc_addr: str) -> None:
        """The membership check: a peer mTLS handshake with ``rpc_addr`` (the peer CA, the
        ``replicate`` permission, the hello answered by ``node_id``) whose certificate
        names ``node_id`` (:func:`raftlog.security.peer_identity.names_node`). Returns, or
        raises PermissionError saying why the member must not be added."""
        transport = self.transport
        if transport is None:
            raise PermissionError("the Raft transport is not up")
        try:
            cert = await transport.probe(node_id, rpc_addr)
        except Exception as exc:
            raise PermissionError(
                f"peer handshake with {rpc_addr} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not names_node(cert, node_id):
            raise PermissionError(
                f"the certificate at {rpc_addr} (subject {peer_common_name(cert)!r}) does not "
                f"name node {node_id!r}"
            )

    async def _check_cluster(self, serf: SerfAgent) -> None:
        """Refuse to go on when the members this node joined belong to another cluster
        than its data directory (their Serf tags name another cluster id)."""
        if self.identity.cluster_id is None:
            return
        async with await serf.connect() as client:
            members = await client.members(timeout=5.0)
        others = {
            m.name: m.tags.get(CLUSTER_ID_TAG, "")
            for m in members
            if m.name != self.config.node_name and m.status == "alive"
        }
        check_cluster(self.identity, self.config.data_dir, others)

    async def _learn_cluster(self, membership: Membership | StaticMembership) -> None:
        """A node added to a cluster records the cluster id its leader advertises."""
        node = self.node
        if node is None or self.identity.cluster_id is not None:
            return
        leader = node.leader_id
        if not leader or leader == node.id or node.id not in node.membership:
            return
        if not isinstance(membership, Membership):
            return
        view = membership.view
        # the leader's tag, else any other member's (a member that joined fresh has none
        # until it restarts: Serf tags are set when the agent starts)
        for name in [leader, *(s.id for s in node.membership if s.id != node.id)]:
            member = view.get(name)
            cluster_id = member.tags.get(CLUSTER_ID_TAG, "") if member is not None else ""
            if cluster_id:
                await self._record_cluster(cluster_id)
                return

    async def _watch_leadership(self) -> None:
        """Keep Raft's address hints in line with Serf's tags; reconcile on election."""
        assert self.node is not None and self.membership is not None
        node, membership = self.node, self.membership
        was_leader = False
        hints: dict[str, str] = {}
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if isinstance(membership, Membership):
                fresh = {
                    name: m.tags[RPC_ADDR_TAG]
                    for name, m in membership.view.items()
                    if RPC_ADDR_TAG in m.tags and m.status == "alive"
                }
                if fresh != hints:
                    hints = fresh
                    node.set_peer_addresses(hints)
            try:
                await self._learn_cluster(membership)
            except OSError as exc:  # a full or failing disk: tried again next time
                logger.warning("recording the cluster id failed: %s", exc)
            leader = node.is_leader
            if leader != was_leader:
                logger.info(
                    "node %s %s the leader in term %d",
                    node.id,
                    "is now" if leader else "is no longer",
                    node.term,
                    extra={
                        "term": node.term,
                        "leader": node.leader_id,
                        "role": "leader" if leader else "follower",
                    },
                )
            if leader and not was_leader:
                try:
                    await membership.reconcile()
                except Exception as exc:
                    logger.warning("membership reconcile after election failed: %s", exc)
            was_leader = leader

    async def _stop_membership(self) -> None:
        joining, self._dns_join = self._dns_join, None
        if joining is not None:
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await joining
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await self._hand_over()
        if self.membership is not None:
            await self.membership.close()
        if self.serf is not None:
            await self.serf.stop()  # graceful leave: the leader removes us from Raft

    async def _hand_over(self) -> None:
        """A leaving leader hands leadership over first, so that the next leader sees the
        leave and removes it (and writes stall for a moment, not an election timeout)."""
        node = self.node
        if node is None or not node.is_leader or len(node.membership.voters) < 2:
            return
        try:
            new = await node.transfer_leadership(timeout=TRANSFER_TIMEOUT)
            logger.info("leadership handed over to %s before leaving", new)
        except (RaftError, TimeoutError) as exc:
            logger.warning("leadership hand-over before leaving failed: %s", exc)
