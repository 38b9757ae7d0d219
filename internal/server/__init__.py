"""raftlog.server: the gRPC API of a node (``log.v1.Log``), its security and its errors.

- :mod:`~raftlog.server.protocols`: what the server needs (``CommitLog``, ``ServerLister``,
  ``Authorizer``), implemented by :class:`~raftlog.server.local.LocalLog` on one node and by
  the cluster's DistributedLog later.
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
from raftlog.server.protocols import Authorizer, CommitLog, ServerInfo, ServerLister
from raftlog.server.server import INSECURE_WARNING, LOG_SERVICE_NAME, BindError, LogServer
from raftlog.server.service import LogService

__all__ = [
    "DEFAULT_ACTIONS",
    "INSECURE_WARNING",
    "LOG_SERVICE_NAME",
    "STATUS_CODES",
    "Authorizer",
    "BindError",
    "CommitLog",
    "LocalLog",
    "LogServer",
    "LogService",
    "ServerConfig",
    "ServerConfigError",
    "ServerInfo",
    "ServerLister",
    "code_of",
    "status_for",
    "subject_of",
]
