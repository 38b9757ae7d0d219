"""One TCP port per node for Raft and gRPC: route each connection by its first byte.

- :class:`Mux` / :class:`MuxConfig` (:mod:`raftlog.mux.mux`): accept, read one byte with
  a deadline, hand registered markers (:data:`RAFT_MARKER`) to their handler, relay the
  rest to the grpc.aio server's unix socket.
- :class:`PrivateSocketDir` (:mod:`raftlog.mux.sockdir`): the 0700 directory for that
  socket, named after its owner; :func:`remove_stale_socket_dirs` removes those of
  agents that died without cleaning up (SIGKILL).
- :mod:`raftlog.mux.relay`: the flow-controlled byte pipe. See ``docs/mux.md``.
"""

from raftlog.mux.mux import (
    RAFT_MARKER,
    ConnectionHandler,
    Mux,
    MuxConfig,
    MuxConfigError,
    MuxMetrics,
)
from raftlog.mux.sockdir import PrivateSocketDir, remove_stale_socket_dirs

__all__ = [
    "RAFT_MARKER",
    "ConnectionHandler",
    "Mux",
    "MuxConfig",
    "MuxConfigError",
    "MuxMetrics",
    "PrivateSocketDir",
    "remove_stale_socket_dirs",
]
