"""raftlog.server: the gRPC API of a node (``log.v1.Log``), its security and its errors.

- :mod:`~raftlog.server.local`: :class:`LocalLog`, the single node's log; it implements
  what the server needs (:mod:`raftlog.domain.protocols`: ``CommitLog``, ``ServerLister``),
  as the cluster's DistributedLog does.
- :mod:`~raftlog.server.service`: the servicer (produce/consume, batches, streams).
- :mod:`~raftlog.server.interceptors`: authentication, Casbin authorization, observability.
- :mod:`~raftlog.server.errors`: the gRPC status code of each domain error
  (:mod:`raftlog.domain.errors`) and its rich status (the wire names and the decoder are
  :mod:`raftlog.api.contract` and :mod:`raftlog.api.status`).
- :mod:`~raftlog.server.server`: :class:`LogServer`, the grpc.aio server with health and
  reflection.
"""

from raftlog.server.config import ServerConfig, ServerConfigError
from raftlog.server.errors import STATUS_CODES, code_of, status_for
from raftlog.server.interceptors import DEFAULT_ACTIONS, subject_of
from raftlog.server.local import LocalLog
from raftlog.server.server import INSECURE_WARNING, LOG_SERVICE_NAME, BindError, LogServer
from raftlog.server.service import LogService

__all__ = [
    "DEFAULT_ACTIONS",
    "INSECURE_WARNING",
    "LOG_SERVICE_NAME",
    "STATUS_CODES",
    "BindError",
    "LocalLog",
    "LogServer",
    "LogService",
    "ServerConfig",
    "ServerConfigError",
    "code_of",
    "status_for",
    "subject_of",
]
