"""The client's error taxonomy: what a failed call means and what the client does about it.

Like aiokafka's ``errors.py``, each error says whether the same call may succeed if tried
again (``retriable``) and whether the client should re-learn the cluster first
(``refresh_metadata``: the leader moved, or a server went away). :func:`from_rpc_error` turns
a gRPC failure into one of these, from its status code and, when the server sent one, the
``google.rpc.ErrorInfo`` (domain ``raftlog``) in the trailing metadata
``grpc-status-details-bin``, decoded by :mod:`raftlog.api.status` (the decoder the servers
use too; the reasons and keys are :mod:`raftlog.api.contract`).

The retry loop in :mod:`raftlog.client.client` retries ``retriable`` errors with backoff until
the operation's deadline, then raises :class:`DeadlineExceededError` carrying the last error.

The client imports the wire contract from ``raftlog.api``, never ``raftlog.server``: it
must not load the node's modules (the CLI's client commands start quickly, and a
client-only install needs no server code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from raftlog.api.contract import Key, Reason
from raftlog.api.status import error_info_from_metadata


class ClientError(Exception):
    """Base of every error the client raises.

    Attributes:
        code: the gRPC status code (None for errors the client makes itself).
        reason: ErrorInfo reason from the server (for example ``OFFSET_OUT_OF_RANGE``), or
            the status code's name.
        metadata: ErrorInfo metadata (string -> string), empty if the server sent none.
        retriable: the same call may succeed if tried again (on this or another server).
        refresh_metadata: re-learn the servers and the leader before retrying.
        addr: the server that answered (or failed to), if known.
    """

    retriable: bool = False
    refresh_metadata: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        addr: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason or (code.name if code is not None else type(self).__name__)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.addr = addr


class UnavailableError(ClientError):
    """The server could not be reached or cannot serve now (restarting, shutting down)."""

    retriable = True
    refresh_metadata = True


class NotLeaderError(UnavailableError):
    """The server is not the leader; ``leader_addr`` names the leader when it knows it."""

    @property
    def leader_addr(self) -> str:
        """The leader's rpc address from the error's details ('' if not given)."""
        return self.metadata.get(Key.LEADER_ADDR, "")


class AttemptTimeoutError(ClientError):
    """One attempt got no answer in time (or the server's own bounded wait ran out).

    Retriable: the next attempt may go to another server. Without the idempotent producer
    a retried produce whose first attempt was in fact committed appends the records twice.
    """

    retriable = True
    refresh_metadata = True


class DeadlineExceededError(ClientError):
    """The operation's overall deadline ran out while retrying; ``last_error`` says why."""

    def __init__(self, message: str, last_error: ClientError | None, attempts: int) -> None:
        super().__init__(
            message,
            code=grpc.StatusCode.DEADLINE_EXCEEDED,
            reason="CLIENT_DEADLINE_EXCEEDED",
            addr=last_error.addr if last_error is not None else "",
        )
        self.last_error = last_error
        self.attempts = attempts


class OffsetOutOfRangeError(ClientError):
    """The offset is not in the log: below ``lowest`` (retention) or above ``highest``."""

    @property
    def offset(self) -> int:
        """The offset asked for (-1 if the server did not say)."""
        return _int(self.metadata.get(Key.OFFSET))

    @property
    def lowest(self) -> int:
        """The lowest offset the server holds (-1 if it did not say)."""
        return _int(self.metadata.get(Key.LOWEST))

    @property
    def highest(self) -> int:
        """The highest committed offset of the server (-1 if it did not say)."""
        return _int(self.metadata.get(Key.HIGHEST))

    @property
    def beyond_end(self) -> bool:
        """The offset is past the server's end: a lagging follower may just not have it yet."""
        return Key.HIGHEST in self.metadata and self.offset > self.highest


class InvalidArgumentError(ClientError):
    """The request is malformed or too large (``reason`` RECORD_TOO_LARGE); not retriable."""


class SequenceTooOldError(ClientError):
    """The idempotent producer's request is older than every sequence the server remembers
    for this producer: it may or may not have been appended, and the server will not guess.
    Not retriable (only a client with requests more than the server's window apart in
    flight sees it; the client keeps them within ``ClientConfig.max_sequence_span``)."""


class PermissionDeniedError(ClientError):
    """The ACL does not allow this client's certificate subject the action."""


class UnauthenticatedError(ClientError):
    """The server saw no client certificate subject."""


class ServerError(ClientError):
    """Any other failure the server reported (INTERNAL, storage errors); not retriable."""


class UnknownTopicError(ClientError):
    """The topic does not exist, or has no such partition (NOT_FOUND, reason
    UNKNOWN_TOPIC); not retriable: create the topic, or ask for a partition it has."""

    @property
    def topic(self) -> str:
        """The topic the server named ('' if it did not)."""
        return self.metadata.get(Key.TOPIC, "")


class PartialProduceError(ClientError):
    """A keyed batch (``LogClient.produce_keyed``) was written to some partitions and not
    to others: each partition's request is atomic, the batch as a whole is not.

    ``produced`` maps each partition that took its records to its first offset;
    ``errors`` maps each partition that did not to why (after the client's retries).
    Producing the failed partitions' records again is safe for the others: they are not
    sent again.
    """

    def __init__(
        self, message: str, produced: Mapping[int, int], errors: Mapping[int, ClientError]
    ) -> None:
        first = next(iter(errors.values()), None)
        super().__init__(
            message,
            code=first.code if first is not None else None,
            reason="PARTIAL_PRODUCE",
            addr=first.addr if first is not None else "",
        )
        self.produced: dict[int, int] = dict(produced)
        self.errors: dict[int, ClientError] = dict(errors)


class NoServersError(UnavailableError):
    """None of the bootstrap addresses answered: the client cannot learn the cluster."""


class ClientClosedError(ClientError):
    """The client was closed; calls made after (or pending during) close fail with this."""


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


#: Status code -> error class (the class says whether to retry and refresh).
_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    # The client never cancels a unary call itself: CANCELLED means its channel was closed
    # under it (the server left the cluster) or the server cancelled; ABORTED is transient.
    grpc.StatusCode.CANCELLED: UnavailableError,
    grpc.StatusCode.ABORTED: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: AttemptTimeoutError,
    grpc.StatusCode.OUT_OF_RANGE: OffsetOutOfRangeError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: InvalidArgumentError,  # message over gRPC's limit
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.NOT_FOUND: UnknownTopicError,  # the only NOT_FOUND of log.v1
}


def from_rpc_error(exc: grpc.RpcError, addr: str = "") -> ClientError:
    """Classify a failed call; the result's ``__cause__`` is left to the caller."""
    call: Any = exc
    code: grpc.StatusCode | None = call.code() if hasattr(call, "code") else None
    details: str = (call.details() if hasattr(call, "details") else None) or str(exc)
    trailing = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    info = error_info_from_metadata(trailing)
    reason = info.reason if info is not None else ""
    metadata = dict(info.metadata) if info is not None else {}
    if reason == Reason.NOT_LEADER:
        cls: type[ClientError] = NotLeaderError
    elif reason == Reason.UNKNOWN_TOPIC:
        cls = UnknownTopicError
    elif reason == Reason.SEQUENCE_TOO_OLD:
        cls = SequenceTooOldError
    elif reason in (Reason.NO_SPACE, Reason.DISK_FAILED, Reason.DATA_LOSS):
        # that node's disk is full or failed, or its copy of a record is damaged (until
        # repaired): another node may take the call
        cls = UnavailableError
    elif code is None:
        cls = ServerError
    else:
        cls = _BY_CODE.get(code, ServerError)
    return cls(details, code=code, reason=reason, metadata=metadata, addr=addr)


def describe(error: ClientError) -> str:
    """One line for ``error``: its reason and message (and the server, when known)."""
    where = f" (server {error.addr})" if error.addr else ""
    return f"{error.reason}: {error.message}{where}"
