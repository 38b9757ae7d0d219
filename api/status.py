"""The rich status of a raftlog error: one encoder for servers, one decoder for everyone.

A failed call carries, besides its status code and message, the trailing metadata
:data:`~raftlog.api.contract.STATUS_DETAILS_KEY` (``grpc-status-details-bin``): a serialized
``google.rpc.Status`` whose ``details`` hold one ``google.rpc.ErrorInfo`` with domain
:data:`~raftlog.api.contract.ERROR_DOMAIN`. The server encodes it with :func:`status_details`;
the client, the forwarding follower and the tests read it with
:func:`error_info_from_metadata`, so both sides parse the same bytes the same way.

Needs ``grpcio`` and the ``google.rpc`` protos of ``grpcio-status`` only: no server code, no
``cryptography``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from raftlog.api.contract import ERROR_DOMAIN, STATUS_DETAILS_KEY


@dataclass(frozen=True)
class ErrorInfo:
    """The raftlog ``ErrorInfo`` of a failed call: its reason and string metadata."""

    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def status_details(code: int, message: str, reason: str, metadata: Mapping[str, str]) -> bytes:
    """The value of the ``grpc-status-details-bin`` trailer for one raftlog error.

    ``code`` is the numeric gRPC status code (``grpc.StatusCode.X.value[0]``); it must be
    the code the call ends with (the gRPC rich-status convention).
    """
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code, message=message, details=[detail])
    serialized: bytes = status.SerializeToString()
    return serialized


def error_info_from_metadata(trailing: Iterable[Any] | None) -> ErrorInfo | None:
    """The raftlog ErrorInfo in a call's trailing metadata (``(key, value)`` pairs), or None.

    None when there is no rich status, when it holds no ErrorInfo of the raftlog domain, or
    when it does not parse: a malformed trailer is no reason to lose the call's own status.
    """
    for item in trailing or ():
        key, value = item[0], item[1]
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return ErrorInfo(str(info.reason), dict(info.metadata))
    return None
