"""gRPC status codes of the domain errors, and the rich status each is sent as.

The errors themselves (reason, metadata, ``retriable``, ``refresh_leader``) live in
:mod:`raftlog.domain.errors`, below every layer that raises them; this module only says
which status code each one ends a call with (:data:`STATUS_CODES`, one table) and builds
what goes on the wire (:func:`status_for`).

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

from raftlog.api.contract import STATUS_DETAILS_KEY
from raftlog.api.status import status_details
from raftlog.domain.errors import (
    AdminRefusedError,
    DataLossError,
    DeadlineError,
    DiskFailedError,
    DomainError,
    InvalidArgumentError,
    NoSpaceError,
    NotLeaderError,
    NotMemberError,
    OffsetOutOfRangeError,
    PermissionDeniedError,
    SequenceTooOldError,
    StorageError,
    TopicExistsError,
    TopicRefusedError,
    UnauthenticatedError,
    UnavailableError,
    UnknownTopicError,
    UnsupportedError,
)

#: Error class -> the status code it ends a call with. A subclass without an entry takes
#: its nearest ancestor's (RecordTooLargeError is an InvalidArgumentError).
STATUS_CODES: Mapping[type[DomainError], grpc.StatusCode] = {
    DomainError: grpc.StatusCode.INTERNAL,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    OffsetOutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    NotLeaderError: grpc.StatusCode.UNAVAILABLE,
    DeadlineError: grpc.StatusCode.DEADLINE_EXCEEDED,
    SequenceTooOldError: grpc.StatusCode.FAILED_PRECONDITION,
    UnsupportedError: grpc.StatusCode.UNIMPLEMENTED,
    NotMemberError: grpc.StatusCode.NOT_FOUND,
    AdminRefusedError: grpc.StatusCode.FAILED_PRECONDITION,
    StorageError: grpc.StatusCode.INTERNAL,
    NoSpaceError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DiskFailedError: grpc.StatusCode.UNAVAILABLE,
    DataLossError: grpc.StatusCode.DATA_LOSS,
    UnknownTopicError: grpc.StatusCode.NOT_FOUND,
    TopicExistsError: grpc.StatusCode.ALREADY_EXISTS,
    TopicRefusedError: grpc.StatusCode.FAILED_PRECONDITION,
}


def code_of(error: DomainError) -> grpc.StatusCode:
    """The status code ``error`` ends a call with (its class's, or its nearest ancestor's)."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_for(error: DomainError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(code, message, trailing metadata with the rich status) for ``error``."""
    code = code_of(error)
    details = status_details(code.value[0], error.message, error.reason, error.metadata)
    return code, error.message, ((STATUS_DETAILS_KEY, details),)
