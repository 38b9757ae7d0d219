"""The node's configuration: one frozen :class:`AgentConfig`, from file, env and flags.

Precedence (highest first): command-line flags > environment variables ``RAFTLOG_<NAME>``
(for example ``RAFTLOG_RPC_PORT``) > the YAML config file (``--config-file`` or
``RAFTLOG_CONFIG_FILE``) > the defaults below. Every key has the same name in all three
places: ``rpc_port`` in YAML (``rpc-port`` works too), ``RAFTLOG_RPC_PORT`` in the
environment, ``--rpc-port`` on the command line.

Relative paths are resolved against the current directory, except those in a config file,
which are resolved against the file's directory. The defaults are relative to the current
directory and work from the repository root after ``make certs``.

An error names the key, where the value came from, and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "RAFTLOG_"
MIB = 1 << 20
LOG_LEVELS = ("debug", "info", "warning", "error")
SYNC_POLICIES = ("always", "interval", "never")
EVENT_LOOPS = ("uvloop", "asyncio")
SERF_PROFILES = ("lan", "wan", "local")
LOG_FORMATS = ("text", "json")
#: The standard OpenTelemetry variable that turns tracing on when --otlp-endpoint is unset.
OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: Bounds of segment_bytes (one segment's store file: records plus 8 bytes of framing each).
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 1 << 30
#: Units of a duration such as ``168h``, ``30m``, ``90s`` or ``1h30m`` (seconds each).
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """A configuration value is missing, malformed or inconsistent; the message says which."""


def _doc(help_text: str, kind: str, *, cluster: bool = False, choices: tuple[str, ...] = ()) -> Any:
    return {"help": help_text, "kind": kind, "cluster": cluster, "choices": choices}


@dataclass(frozen=True)
class AgentConfig:
    """Every setting of a node. Units and defaults are in each field's help text.

    Cluster-only settings (``start_join_addrs``, ``bootstrap``, ``peer_tls_*``) are always
    parsed and validated, and used only in cluster mode (see :attr:`cluster_mode`); a node
    outside it serves one local log with no Raft, mux or membership.
    """

    data_dir: Path = field(
        default=Path(".data/node-0"),
        metadata=_doc("directory of the node's commit log (created if missing)", "path"),
    )
    node_name: str = field(
        default="node-0",
        metadata=_doc("unique id of this node in the cluster (never an address)", "str"),
    )
    bind_addr: str = field(
        default="127.0.0.1:8401",
        metadata=_doc(
            "HOST:PORT for Serf gossip; HOST is also the address the RPC port listens on",
            "addr",
        ),
    )
    rpc_port: int = field(
        default=8400,
        metadata=_doc("TCP port of the gRPC API on the bind host (0 = any free port)", "port"),
    )
    http_port: int = field(
        default=0,
        metadata=_doc(
            "TCP port of the HTTP/JSON API on the bind host, same TLS and ACL as gRPC "
            "(0 = off; see docs/deploy.md)",
            "port",
        ),
    )
    start_join_addrs: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Serf addresses (HOST:PORT, comma separated) of cluster members to join",
            "addrs",
            cluster=True,
        ),
    )
    bootstrap: bool = field(
        default=False,
        metadata=_doc(
            "bootstrap a new cluster with this node (first node only)", "bool", cluster=True
        ),
    )
    join_dns: str = field(
        default="",
        metadata=_doc(
            "NAME[:PORT] whose A/AAAA records are the Serf gossip addresses to join (a "
            "Kubernetes headless service; PORT defaults to this node's gossip port); "
            "re-resolved until joined; the node named <anything>-0 with an empty data dir "
            "bootstraps when no leader answers (docs/cluster.md); empty = off",
            "str",
            cluster=True,
        ),
    )
    dns_server: str = field(
        default="",
        metadata=_doc(
            "HOST:PORT of the DNS server --join-dns asks (UDP); empty = the system resolver",
            "str",
            cluster=True,
        ),
    )
    join_dns_timeout_s: float = field(
        default=300.0,
        metadata=_doc(
            "longest time --join-dns keeps resolving and joining before it gives up, seconds",
            "seconds",
            cluster=True,
        ),
    )
    dns_bootstrap_wait_s: float = field(
        default=5.0,
        metadata=_doc(
            "with --join-dns, how long ordinal 0 with an empty data dir listens for an "
            "existing leader before it bootstraps a new cluster, seconds",
            "seconds",
            cluster=True,
        ),
    )
    peers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "static membership instead of Serf (cluster mode): ID=HOST:PORT rpc addresses of "
            "the members, comma separated; the leader adds every listed peer",
            "peers",
        ),
    )
    serf_rpc_addr: str = field(
        default="",
        metadata=_doc(
            "HOST:PORT (loopback) of this node's Serf agent RPC (cluster mode); empty = "
            "127.0.0.1 with the gossip port + 1",
            "addr",
        ),
    )
    serf_profile: str = field(
        default="lan",
        metadata=_doc(
            "Serf timing profile (cluster mode): lan, wan, or local (one machine: failures "
            "are detected fastest)",
            "choice",
            choices=SERF_PROFILES,
        ),
    )
    serf_encrypt_key: str = field(
        default="",
        metadata=_doc(
            "base64 gossip encryption key of 16/24/32 bytes shared by every member "
            "(`serf keygen`; cluster mode); empty = gossip in clear text",
            "str",
        ),
    )
    serf_encrypt_key_file: str = field(
        default="",
        metadata=_doc(
            "file holding the base64 gossip key (what `raftlog cert` writes as gossip.key; "
            "kept off the command line); used when serf_encrypt_key is empty; empty = none",
            "path_or_empty",
        ),
    )
    audit_log: str = field(
        default="",
        metadata=_doc(
            "append an audit trail (JSON lines: denied calls, admin calls, membership "
            "changes and refused members; never a payload or a key) to this file; empty = off",
            "path_or_empty",
        ),
    )
    failed_grace_s: float = field(
        default=30.0,
        metadata=_doc(
            "a member Serf reports failed is removed from Raft after this many seconds "
            "(cluster mode), so a node that restarts quickly keeps its place",
            "seconds",
        ),
    )
    controller_voters: int = field(
        default=3,
        metadata=_doc(
            "members that vote in the controller group, which holds the topics and the "
            "placement of their partitions (cluster mode): the first ones to join; the "
            "others hold a non-voting copy. Odd: 3 survives one failure, 5 two",
            "count",
        ),
    )
    replica_grace_s: float = field(
        default=30.0,
        metadata=_doc(
            "a partition replica on a node that is down is re-created on another node after "
            "this many seconds (cluster mode): a restart or a short partition copies nothing",
            "seconds",
        ),
    )
    disk_full_retry_s: float = field(
        default=0.5,
        metadata=_doc(
            "while the data directory's disk is full (ENOSPC), the node refuses writes with "
            "RESOURCE_EXHAUSTED and retries the write that failed every this many seconds, "
            "resuming by itself once space is freed (cluster mode)",
            "seconds",
        ),
    )
    snapshot_threshold: int = field(
        default=8192,
        metadata=_doc(
            "Raft entries applied between two snapshots (cluster mode); the Raft log is "
            "compacted behind each snapshot; 0 = never",
            "count",
        ),
    )
    snapshot_bytes: int = field(
        default=32 << 20,
        metadata=_doc(
            "bytes of Raft entries applied between two snapshots, whichever of this and "
            "snapshot_threshold comes first (cluster mode): bounds the memory the Raft log "
            "holds and its size on disk; a snapshot only references the commit log, so it "
            "is cheap; 0 = count entries only",
            "size",
        ),
    )
    retention_bytes: int = field(
        default=0,
        metadata=_doc(
            "retention by size (cluster mode): keep at most this many bytes of records "
            "(segment store files, framing included); the leader drops the oldest whole "
            "segments through Raft, so every replica keeps the same offsets; the active "
            "segment always stays; 0 = no limit",
            "size",
        ),
    )
    retention_age: float = field(
        default=0.0,
        metadata=_doc(
            "retention by age (cluster mode): drop every segment whose last write is older "
            "than this duration (e.g. 168h, 30m, 90s, 1h30m; a bare number is seconds), "
            "measured on the leader; 0 = no limit",
            "duration",
        ),
    )
    scrub_rate_mb_s: float = field(
        default=1.0,
        metadata=_doc(
            "scrub rate (cluster mode): how fast the background scrubber re-reads sealed "
            "segments to verify every record's checksum, in MB/s (10^6 bytes per second); "
            "damaged records are repaired from a replica; 0 = no scrubbing (reads and "
            "checkpoint hashes still find damage)",
            "number",
        ),
    )
    scrub_interval: float = field(
        default=3600.0,
        metadata=_doc(
            "scrub pass interval (cluster mode): a full pass over the sealed segments starts "
            "again this long after the previous one started (e.g. 1h, 30m, 90s; a bare "
            "number is seconds); a pass that takes longer is followed at once",
            "duration",
        ),
    )
    checkpoint_hash_interval: float = field(
        default=60.0,
        metadata=_doc(
            "checkpoint hash interval (cluster mode): how often the leader proposes the "
            "content hash of the records sealed since the last one, which every replica "
            "compares with its own (e.g. 60s, 5m; a bare number is seconds); 0 = never",
            "duration",
        ),
    )
    segment_bytes: int = field(
        default=64 * MIB,
        metadata=_doc(
            "size at which the commit log rolls over to a new segment, bytes (4 KiB to "
            "1 GiB; default 64 MiB); retention drops whole segments, so this is its step",
            "size",
        ),
    )
    acl_model_file: Path = field(
        default=Path("certs/model.conf"),
        metadata=_doc("Casbin ACL model file", "path"),
    )
    acl_policy_file: Path = field(
        default=Path("certs/policy.csv"),
        metadata=_doc("Casbin ACL policy file (CSV)", "path"),
    )
    deny_list_file: Path | None = field(
        default=None,
        metadata=_doc(
            "revocation deny list: one 'serial:<hex>' or 'subject:<name>' a line, checked "
            "at each handshake and call, re-read on SIGHUP (docs/security.md); unset = none",
            "path",
        ),
    )
    server_tls_cert_file: Path = field(
        default=Path("certs/server.pem"),
        metadata=_doc("PEM certificate the gRPC server presents", "path"),
    )
    server_tls_key_file: Path = field(
        default=Path("certs/server-key.pem"),
        metadata=_doc("PEM private key of the server certificate", "path"),
    )
    server_tls_ca_file: Path = field(
        default=Path("certs/ca.pem"),
        metadata=_doc("PEM CA that client certificates must be signed by", "path"),
    )
    peer_tls_cert_file: Path = field(
        default=Path("certs/server.pem"),
        metadata=_doc("PEM certificate this node presents to its peers", "path", cluster=True),
    )
    peer_tls_key_file: Path = field(
        default=Path("certs/server-key.pem"),
        metadata=_doc("PEM private key of the peer certificate", "path", cluster=True),
    )
    peer_tls_ca_file: Path = field(
        default=Path("certs/ca.pem"),
        metadata=_doc("PEM CA that peer certificates must be signed by", "path", cluster=True),
    )
    peer_tls_server_name: str = field(
        default="",
        metadata=_doc(
            "name checked in a peer's certificate when this node dials it (Raft, forwarded "
            "writes); empty = the address dialled (Kubernetes: a name every pod's certificate "
            "carries, e.g. the headless service's DNS name)",
            "str",
            cluster=True,
        ),
    )
    insecure: bool = field(
        default=False,
        metadata=_doc(
            "serve without TLS and without ACL checks (development sandboxes only; logged loudly)",
            "bool",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_doc("log level", "choice", choices=LOG_LEVELS),
    )
    log_format: str = field(
        default="text",
        metadata=_doc(
            "log line format on stderr: text (for people) or json (one object per line: "
            "time, level, logger, node_id, message, and term/peer/offset where they apply)",
            "choice",
            choices=LOG_FORMATS,
        ),
    )
    metrics_addr: str = field(
        default="",
        metadata=_doc(
            "HOST:PORT of the plain-HTTP listener for /metrics (Prometheus), /healthz and "
            "/readyz, apart from the mTLS port; port 0 = any free port (logged); empty = "
            "off. It serves numbers only, no records: bind it to a trusted network",
            "addr_or_empty",
        ),
    )
    latency_budget: bool = field(
        default=False,
        metadata=_doc(
            "debug: trace every unary Produce through the node (interceptors, Raft rounds, "
            "fsyncs, follower acks, apply) and serve p50/p99 per stage on "
            "metrics_addr/debug/latency and as raftlog_debug_request_stage_seconds "
            "(docs/performance.md); costs about 2 us per call; needs metrics_addr",
            "bool",
        ),
    )
    otlp_endpoint: str = field(
        default="",
        metadata=_doc(
            "OTLP/gRPC collector that receives this node's traces (http://HOST:PORT for "
            f"plaintext, https:// for TLS); empty = the {OTEL_ENDPOINT_ENV} environment "
            "variable if set, else tracing off",
            "url",
        ),
    )
    sync: str = field(
        default="always",
        metadata=_doc(
            "when appends are fsynced: always (before acknowledging; group commit), interval "
            "(within 0.2 s), never (left to the OS)",
            "choice",
            choices=SYNC_POLICIES,
        ),
    )
    max_message_bytes: int = field(
        default=4 * MIB,
        metadata=_doc(
            "largest record / produce batch payload accepted, bytes (default 4 MiB)", "size"
        ),
    )
    shutdown_timeout_s: float = field(
        default=10.0,
        metadata=_doc("longest graceful shutdown before calls are cut off, seconds", "seconds"),
    )
    event_loop: str = field(
        default="asyncio",
        metadata=_doc(
            "event loop the node runs on: asyncio (the standard loop) or uvloop (falls back "
            "to asyncio where uvloop is not installed; end to end it measured within noise "
            "of asyncio here, see docs/cluster.md)",
            "choice",
            choices=EVENT_LOOPS,
        ),
    )

    # -- derived -----------------------------------------------------------------------

    @property
    def bind_host(self) -> str:
        """The host part of ``bind_addr``."""
        return _split_addr(self.bind_addr, "bind_addr")[0]

    @property
    def rpc_addr(self) -> str:
        """HOST:PORT of the gRPC API (bind host, RPC port)."""
        host = self.bind_host
        return f"[{host}]:{self.rpc_port}" if ":" in host else f"{host}:{self.rpc_port}"

    @property
    def gossip_port(self) -> int:
        """The port part of ``bind_addr`` (Serf gossip)."""
        return _split_addr(self.bind_addr, "bind_addr")[1]

    @property
    def serf_rpc(self) -> str:
        """HOST:PORT of the Serf agent's RPC: ``serf_rpc_addr`` or loopback, gossip port + 1."""
        if self.serf_rpc_addr:
            return self.serf_rpc_addr
        return f"127.0.0.1:{self.gossip_port + 1}"

    def tracing_endpoint(self, environ: Mapping[str, str] | None = None) -> str:
        """The OTLP endpoint traces go to: ``otlp_endpoint``, else the standard
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` of ``environ`` (default ``os.environ``); "" = off."""
        if self.otlp_endpoint:
            return self.otlp_endpoint
        env = os.environ if environ is None else environ
        return env.get(OTEL_ENDPOINT_ENV, "").strip()

    @property
    def cluster_mode(self) -> bool:
        """Run Raft, the mux and membership: asked for by ``bootstrap``, ``start_join_addrs``
        or ``peers``, or implied by Raft state in ``data_dir`` (a restarted member)."""
        return (
            self.bootstrap
            or bool(self.start_join_addrs)
            or bool(self.peers)
            or bool(self.join_dns)
            or (self.data_dir / "raft").is_dir()
        )

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key whose value is unusable."""
        if not self.node_name or any(c.isspace() for c in self.node_name):
            raise ConfigError(
                f"node_name: must be non-empty without spaces, got {self.node_name!r}"
            )
        for peer in self.peers:
            _split_peer(peer, "peers")
        if self.serf_rpc_addr:
            host, _ = _split_addr(self.serf_rpc_addr, "serf_rpc_addr")
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ConfigError(
                    f"serf_rpc_addr: must be a loopback address (Serf RPC is not encrypted), "
                    f"got {self.serf_rpc_addr!r}"
                )
        if self.serf_profile not in SERF_PROFILES:
            raise ConfigError(
                f"serf_profile: must be one of {', '.join(SERF_PROFILES)}, "
                f"got {self.serf_profile!r}"
            )
        if self.controller_voters < 1 or self.controller_voters % 2 == 0:
            raise ConfigError(
                f"controller_voters: must be an odd number >= 1 (3 or 5), got "
                f"{self.controller_voters}"
            )
        if not (math.isfinite(self.replica_grace_s) and self.replica_grace_s >= 0):
            raise ConfigError(
                f"replica_grace_s: must be a number of seconds >= 0, got {self.replica_grace_s}"
            )
        if not (math.isfinite(self.failed_grace_s) and self.failed_grace_s >= 0):
            raise ConfigError(
                f"failed_grace_s: must be a number of seconds >= 0, got {self.failed_grace_s}"
            )
        if not (math.isfinite(self.disk_full_retry_s) and self.disk_full_retry_s > 0):
            raise ConfigError(
                "disk_full_retry_s: must be a positive number of seconds, "
                f"got {self.disk_full_retry_s}"
            )
        if self.snapshot_threshold < 0:
            raise ConfigError(
                f"snapshot_threshold: must be >= 0 entries, got {self.snapshot_threshold}"
            )
        if self.snapshot_bytes < 0:
            raise ConfigError(f"snapshot_bytes: must be >= 0 bytes, got {self.snapshot_bytes}")
        self._validate_retention()
        _split_addr(self.bind_addr, "bind_addr")
        self._validate_dns()
        for addr in self.start_join_addrs:
            _split_addr(addr, "start_join_addrs")
        if not 0 <= self.rpc_port <= 65535:
            raise ConfigError(f"rpc_port: must be a port number 0-65535, got {self.rpc_port}")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(
                f"http_port: must be a port number 0-65535 (0 = off), got {self.http_port}"
            )
        if self.http_port and self.http_port == self.rpc_port:
            raise ConfigError(f"http_port: must differ from rpc_port ({self.rpc_port})")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format: must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.metrics_addr:
            _split_addr(self.metrics_addr, "metrics_addr")
        if self.otlp_endpoint:
            _check_url(self.otlp_endpoint, "otlp_endpoint")
        if self.latency_budget and not self.metrics_addr:
            raise ConfigError(
                "latency_budget: needs metrics_addr (its figures are served on that "
                "listener's /debug/latency)"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                f"event_loop: must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if self.sync not in SYNC_POLICIES:
            raise ConfigError(f"sync: must be one of {', '.join(SYNC_POLICIES)}, got {self.sync!r}")
        if not 0 < self.max_message_bytes <= 1 << 30:
            raise ConfigError(
                f"max_message_bytes: must be between 1 byte and 1 GiB, got {self.max_message_bytes}"
            )
        if not (math.isfinite(self.shutdown_timeout_s) and self.shutdown_timeout_s > 0):
            raise ConfigError(
                "shutdown_timeout_s: must be a positive number of seconds, "
                f"got {self.shutdown_timeout_s}"
            )
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(f"data_dir: {self.data_dir} exists and is not a directory")
        if self.serf_encrypt_key_file and not Path(self.serf_encrypt_key_file).is_file():
            raise ConfigError(
                f"serf_encrypt_key_file: no such file: {self.serf_encrypt_key_file} "
                "(`raftlog cert` writes gossip.key)"
            )
        if self.audit_log and Path(self.audit_log).is_dir():
            raise ConfigError(f"audit_log: {self.audit_log} is a directory, not a file")
        if self.insecure:
            return
        needed = [
            "acl_model_file",
            "acl_policy_file",
            "server_tls_cert_file",
            "server_tls_key_file",
            "server_tls_ca_file",
            "peer_tls_cert_file",
            "peer_tls_key_file",
            "peer_tls_ca_file",
        ]
        if self.deny_list_file is not None:
            needed.append("deny_list_file")
        for key in needed:
            path: Path = getattr(self, key)
            if not path.is_file():
                hint = " (run `make certs`, or pass --insecure for a sandbox)"
                raise ConfigError(f"{key}: no such file: {path}{hint}")

    def _validate_retention(self) -> None:
        if self.retention_bytes < 0:
            raise ConfigError(
                f"retention_bytes: must be >= 0 bytes (0 = no limit), got {self.retention_bytes}"
            )
        if not (math.isfinite(self.retention_age) and self.retention_age >= 0):
            raise ConfigError(
                f"retention_age: must be a duration >= 0 (0 = no limit), got {self.retention_age}"
            )
        if not (math.isfinite(self.scrub_rate_mb_s) and self.scrub_rate_mb_s >= 0):
            raise ConfigError(
                f"scrub_rate_mb_s: must be >= 0 MB/s (0 = no scrubbing), got {self.scrub_rate_mb_s}"
            )
        if not (math.isfinite(self.scrub_interval) and self.scrub_interval > 0):
            raise ConfigError(f"scrub_interval: must be a duration > 0, got {self.scrub_interval}")
        if not (
            math.isfinite(self.checkpoint_hash_interval) and self.checkpoint_hash_interval >= 0
        ):
            raise ConfigError(
                "checkpoint_hash_interval: must be a duration >= 0 (0 = never), "
                f"got {self.checkpoint_hash_interval}"
            )
        if not MIN_SEGMENT_BYTES <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ConfigError(
                f"segment_bytes: must be between {MIN_SEGMENT_BYTES} bytes (4 KiB) and "
                f"{MAX_SEGMENT_BYTES} bytes (1 GiB), got {self.segment_bytes}"
            )

    def _validate_dns(self) -> None:
        if self.join_dns:
            name, sep, port = self.join_dns.rpartition(":")
            if not sep:
                name, port = self.join_dns, ""
            if not name or any(c.isspace() for c in name) or ":" in name:
                raise ConfigError(f"join_dns: expected NAME[:PORT], got {self.join_dns!r}")
            if port and not (port.isdigit() and 0 < int(port) <= 65535):
                raise ConfigError(
                    f"join_dns: expected NAME[:PORT] with a port 1-65535, got {self.join_dns!r}"
                )
            if self.peers:
                raise ConfigError("join_dns: cannot be combined with peers (static membership)")
            if self.bootstrap:
                raise ConfigError(
                    "join_dns: cannot be combined with bootstrap (with DNS join the node "
                    "named <name>-0 decides to bootstrap; see docs/cluster.md)"
                )
        if self.dns_server:
            _split_addr(self.dns_server, "dns_server")
        name = self.peer_tls_server_name
        if name and (any(c.isspace() for c in name) or (":" in name and not _is_ip(name))):
            raise ConfigError(
                f"peer_tls_server_name: expected a host name or IP without a port, got {name!r}"
            )
        for key in ("join_dns_timeout_s", "dns_bootstrap_wait_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key}: must be a positive number of seconds, got {value}")


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(AgentConfig)}


def parse_duration(value: Any, where: str) -> float:
    """Seconds of a duration: a number (seconds) or ``<number><unit>...`` with units ms, s,
    m, h, d (``168h``, ``30m``, ``90s``, ``1h30m``, ``0``). ConfigError naming ``where``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration such as 168h, 30m or 90s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        seconds = 0.0
        try:
            seconds = float(text)
        except ValueError:
            matches = list(_DURATION_PART.finditer(text))
            if not text or "".join(m.group(0) for m in matches) != text:
                raise ConfigError(
                    f"{where}: expected a duration such as 168h, 30m or 90s, got {value!r}"
                ) from None
            for m in matches:
                unit = m.group(2)
                if unit not in DURATION_UNITS:
                    raise ConfigError(
                        f"{where}: unknown duration unit {unit!r} in {value!r} "
                        f"(use {', '.join(DURATION_UNITS)})"
                    ) from None
                seconds += float(m.group(1)) * DURATION_UNITS[unit]
    else:
        raise ConfigError(f"{where}: expected a duration such as 168h, 30m or 90s, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{where}: must be a duration >= 0, got {value!r}")
    return seconds


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([a-z]*)")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _split_addr(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT (port 0-65535), got {value!r}")
    return host, int(port)


def _check_url(value: str, key: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        raise ConfigError(f"{key}: expected http://HOST:PORT or https://HOST:PORT, got {value!r}")
    return value


def _split_peer(value: str, key: str) -> tuple[str, str]:
    node_id, sep, addr = value.partition("=")
    if not sep or not node_id.strip():
        raise ConfigError(f"{key}: expected ID=HOST:PORT, got {value!r}")
    _split_addr(addr, key)
    return node_id.strip(), addr.strip()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(key: str, value: Any, source: str, base: Path | None) -> Any:
    """Turn a raw value from ``source`` into the type of field ``key``."""
    meta = FIELDS[key].metadata
    kind = meta["kind"]
    where = f"{key} (from {source})"
    if kind == "path":
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        path = Path(os.path.expanduser(str(value)))
        return base / path if base is not None and not path.is_absolute() else path
    if kind == "path_or_empty":
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path or nothing, got {value!r}")
        text = str(value).strip()
        if not text:
            return ""
        path = Path(os.path.expanduser(text))
        return str(base / path if base is not None and not path.is_absolute() else path)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in ("port", "size", "count"):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            what = {
                "port": "a port number 0-65535",
                "size": "a whole number of bytes",
                "count": "a whole number",
            }[kind]
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        return value
    if kind == "duration":
        return parse_duration(value, where)
    if kind == "number":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if kind == "seconds":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number of seconds, got {value!r}") from None
    if kind in ("addrs", "peers"):
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = []
            for v in value:
                items += [p.strip() for p in str(v).split(",") if p.strip()]
        else:
            raise ConfigError(f"{where}: expected a list of HOST:PORT, got {value!r}")
        for item in items:
            if kind == "peers":
                _split_peer(item, where)
            else:
                _split_addr(item, where)
        return tuple(items)
    if kind == "choice":
        text = str(value).strip().lower()
        if text not in meta["choices"]:
            raise ConfigError(
                f"{where}: must be one of {', '.join(meta['choices'])}, got {value!r}"
            )
        return text
    if kind == "addr_or_empty":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected HOST:PORT or nothing, got {value!r}")
        if value.strip():
            _split_addr(value.strip(), where)
        return value.strip()
    if kind == "url":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a URL, got {value!r}")
        if value.strip():
            _check_url(value.strip(), where)
        return value.strip()
    if kind == "addr":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
        _split_addr(value, where)
        return value
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)


def env_name(key: str) -> str:
    """The environment variable of config key ``key`` (``rpc_port`` -> ``RAFTLOG_RPC_PORT``)."""
    return ENV_PREFIX + key.upper()


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a YAML config file, parsed and checked key by key."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config_file: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config_file: {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config_file: {path} must hold a mapping of keys to values")
    base = path.resolve().parent
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise ConfigError(f"{raw_key} (from {path}): unknown key; known keys: {known}")
        values[key] = _parse(key, value, str(path), base)
    return values


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> AgentConfig:
    """Build and validate the config: flags > env > file > defaults.

    ``flags`` holds only the flags given (None values are ignored); ``env`` defaults to
    ``os.environ``; ``config_file`` (or ``RAFTLOG_CONFIG_FILE``) names the YAML file.
    """
    environ = os.environ if env is None else env
    if config_file is None and environ.get(env_name("config_file")):
        config_file = environ[env_name("config_file")]
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(Path(config_file)))
    for key in FIELDS:
        name = env_name(key)
        if name in environ and environ[name] != "":
            values[key] = _parse(key, environ[name], f"env {name}", None)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in FIELDS:
            raise ConfigError(f"--{key.replace('_', '-')}: unknown setting")
        values[key] = _parse(key, value, f"flag --{key.replace('_', '-')}", None)
    config = AgentConfig(**values)
    config.validate()
    return config
