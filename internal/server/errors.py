"""The error taxonomy of the API: every error a call can end with, and how clients react.

Each :class:`ApiError` knows its gRPC status code, whether a client may retry the same call
(``retriable``) and whether it should refresh its view of the cluster's leader first
(``refresh_leader``), the way aiokafka's errors mark ``retriable`` / ``invalid_metadata``.
The servicer raises these; :func:`status_for` turns one into what goes on the wire.

Structured details: an error is sent as a rich status (``grpcio-status``): the trailing
metadata ``grpc-status-details-bin`` holds a ``google.rpc.Status`` whose ``details`` carry one
``google.rpc.ErrorInfo`` with ``domain = "raftlog"``, ``reason`` (for example
``OFFSET_OUT_OF_RANGE``) and string ``metadata`` (for OUT_OF_RANGE: ``offset``, ``lowest``,
``highest``). The names are the wire contract of :mod:`raftlog.api.contract`; the bytes
are made and read by :mod:`raftlog.api.status` (clients read them with
``raftlog.api.status.error_info_from_metadata`` or ``grpc_status.rpc_status.from_call``);
plain clients still get the same facts in the message.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from raftlog.api.contract import STATUS_DETAILS_KEY, Key, Reason
from raftlog.api.status import status_details


class ApiError(Exception):
    """Base of the errors a call ends with; subclasses fix code, reason and retry advice."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = Reason.INTERNAL
    #: The same call may succeed if tried again later (on this or another server).
    retriable: bool = False
    #: The client should re-learn the leader (GetServers) before retrying.
    refresh_leader: bool = False

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgumentError(ApiError):
    """The request is malformed (both record and records set, neither set, bad budget)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT


class RecordTooLargeError(InvalidArgumentError):
    """A record (or a batch's payload) is larger than the server's message size limit."""

    reason = Reason.RECORD_TOO_LARGE

    def __init__(self, size: int, limit: int, what: str = "record") -> None:
        super().__init__(
            f"{what} of {size} bytes is larger than the limit of {limit} bytes (max_message_bytes)",
            {Key.SIZE: str(size), Key.LIMIT: str(limit)},
        )


class OffsetOutOfRangeError(ApiError):
    """The offset is not in the log; the message and details say which offsets are."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = Reason.OFFSET_OUT_OF_RANGE

    def __init__(self, offset: int, lowest: int, highest: int) -> None:
        if highest < lowest:
            held = f"the log is empty (lowest {lowest}, highest {highest})"
        else:
            held = f"the log holds lowest {lowest} to highest {highest}"
        super().__init__(
            f"offset {offset} is out of range: {held}",
            {Key.OFFSET: str(offset), Key.LOWEST: str(lowest), Key.HIGHEST: str(highest)},
        )
        self.offset, self.lowest, self.highest = offset, lowest, highest


class UnauthenticatedError(ApiError):
    """The connection carries no client certificate subject."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class PermissionDeniedError(ApiError):
    """The policy does not allow this subject this action."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED

    def __init__(self, subject: str, action: str, obj: str = "*") -> None:
        super().__init__(
            f"subject {subject!r} is not permitted to {action} (object {obj!r})",
            {Key.SUBJECT: subject, Key.ACTION: action, Key.OBJECT: obj},
        )


class UnavailableError(ApiError):
    """The server is shutting down or cannot serve now; try again (elsewhere)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.UNAVAILABLE
    retriable = True


class NotLeaderError(ApiError):
    """This node is not the leader (cluster mode); the details name the leader if known."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.NOT_LEADER
    retriable = True
    refresh_leader = True


class DeadlineError(ApiError):
    """A bounded internal wait (durability, forwarding) ran out."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = Reason.DEADLINE_EXCEEDED
    retriable = True


class SequenceTooOldError(ApiError):
    """An idempotent request's sequence is older than every sequence the server remembers
    for its producer, and not one of them: the server cannot tell whether it was appended
    (it may have been, and then forgotten), so it refuses rather than risk a duplicate.
    Not retriable with the same sequence; the details carry ``producer_id``, ``sequence``
    and ``oldest`` (the oldest sequence remembered)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.SEQUENCE_TOO_OLD

    def __init__(self, producer_id: str, sequence: int, oldest: int) -> None:
        super().__init__(
            f"sequence {sequence} of producer {producer_id!r} is older than the oldest one "
            f"remembered ({oldest}) and unknown: it may have been appended already",
            {Key.PRODUCER_ID: producer_id, Key.SEQUENCE: str(sequence), Key.OLDEST: str(oldest)},
        )
        self.producer_id, self.sequence, self.oldest = producer_id, sequence, oldest


class UnsupportedError(ApiError):
    """The server's log cannot do what the request asks (an idempotent producer on a log
    that keeps no producer table)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = Reason.UNSUPPORTED


class StorageError(ApiError):
    """The commit log failed (fsync error, corrupt record); not retriable on this node."""

    code = grpc.StatusCode.INTERNAL
    reason = Reason.STORAGE


def status_for(error: ApiError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(code, message, trailing metadata with the rich status) for ``error``."""
    details = status_details(error.code.value[0], error.message, error.reason, error.metadata)
    return error.code, error.message, ((STATUS_DETAILS_KEY, details),)
