"""The errors of the log's domain: what a call can end with, and how a client reacts.

Raised by every log the server can serve (the single node's ``LocalLog``, the cluster's
``DistributedLog``, the replicated state machine) and by the server itself. Each
:class:`DomainError` says whether a client may retry the same call (``retriable``) and
whether it should refresh its view of the cluster's leader first (``refresh_leader``), the
way aiokafka's errors mark ``retriable`` / ``invalid_metadata``; its ``reason`` and
``metadata`` are the ``google.rpc.ErrorInfo`` the client receives.

There are no gRPC status codes here: :mod:`raftlog.server.errors` maps each class to its
code in one table, so the layers below the server (``raftlog.distributed``) raise these
without importing grpc.
"""

from __future__ import annotations

from collections.abc import Mapping

from raftlog.api.contract import OBJECT_WILDCARD, Key, Reason


class DomainError(Exception):
    """Base of the errors a call ends with; subclasses fix the reason and the retry advice.

    ``message`` is for people; ``reason`` (a :class:`raftlog.api.contract.Reason`) and the
    string ``metadata`` (keys of :class:`raftlog.api.contract.Key`) are for programs.
    """

    reason: str = Reason.INTERNAL
    #: The same call may succeed if tried again later (on this or another server).
    retriable: bool = False
    #: The client should re-learn the leader (GetServers) before retrying.
    refresh_leader: bool = False

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgumentError(DomainError):
    """The request is malformed (both record and records set, neither set, bad budget)."""

    reason = Reason.INVALID_ARGUMENT


class RecordTooLargeError(InvalidArgumentError):
    """A record (or a batch's payload) is larger than the server's message size limit."""

    reason = Reason.RECORD_TOO_LARGE

    def __init__(self, size: int, limit: int, what: str = "record") -> None:
        super().__init__(
            f"{what} of {size} bytes is larger than the limit of {limit} bytes (max_message_bytes)",
            {Key.SIZE: str(size), Key.LIMIT: str(limit)},
        )


class OffsetOutOfRangeError(DomainError):
    """The offset is not in the log; the message and details say which offsets are."""

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


class UnauthenticatedError(DomainError):
    """The connection carries no client certificate subject."""

    reason = Reason.UNAUTHENTICATED


class PermissionDeniedError(DomainError):
    """The policy does not allow this subject this action."""

    reason = Reason.PERMISSION_DENIED

    def __init__(self, subject: str, action: str, obj: str = OBJECT_WILDCARD) -> None:
        super().__init__(
            f"subject {subject!r} is not permitted to {action} (object {obj!r})",
            {Key.SUBJECT: subject, Key.ACTION: action, Key.OBJECT: obj},
        )


class UnavailableError(DomainError):
    """The server is shutting down or cannot serve now; try again (elsewhere)."""

    reason = Reason.UNAVAILABLE
    retriable = True


class NotLeaderError(DomainError):
    """This node is not the leader (cluster mode); the details name the leader if known."""

    reason = Reason.NOT_LEADER
    retriable = True
    refresh_leader = True


class DeadlineError(DomainError):
    """A bounded internal wait (durability, forwarding) ran out."""

    reason = Reason.DEADLINE_EXCEEDED
    retriable = True


class SequenceTooOldError(DomainError):
    """An idempotent request's sequence is older than every sequence the server remembers
    for its producer, and not one of them: the server cannot tell whether it was appended
    (it may have been, and then forgotten), so it refuses rather than risk a duplicate.
    Not retriable with the same sequence; the details carry ``producer_id``, ``sequence``
    and ``oldest`` (the oldest sequence remembered)."""

    reason = Reason.SEQUENCE_TOO_OLD

    def __init__(self, producer_id: str, sequence: int, oldest: int) -> None:
        super().__init__(
            f"sequence {sequence} of producer {producer_id!r} is older than the oldest one "
            f"remembered ({oldest}) and unknown: it may have been appended already",
            {Key.PRODUCER_ID: producer_id, Key.SEQUENCE: str(sequence), Key.OLDEST: str(oldest)},
        )
        self.producer_id, self.sequence, self.oldest = producer_id, sequence, oldest


class UnsupportedError(DomainError):
    """The server's log cannot do what the request asks (an idempotent producer on a log
    that keeps no producer table)."""

    reason = Reason.UNSUPPORTED


class StorageError(DomainError):
    """The commit log failed (fsync error, corrupt record); not retriable on this node."""

    reason = Reason.STORAGE


class NotMemberError(DomainError):
    """An admin call names a node that is not a member of the cluster."""

    reason = Reason.NOT_MEMBER

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id} is not a member", {Key.NODE_ID: node_id})
        self.node_id = node_id


class AdminRefusedError(DomainError):
    """An admin call cannot be done in the cluster's present state; the message says why."""

    reason = Reason.ADMIN_REFUSED


class UnknownTopicError(DomainError):
    """The request names a topic that does not exist, or a partition beyond its count."""

    reason = Reason.UNKNOWN_TOPIC

    def __init__(self, message: str, topic: str) -> None:
        super().__init__(message, {Key.TOPIC: topic})


class TopicExistsError(DomainError):
    """CreateTopic of a name that is taken."""

    reason = Reason.TOPIC_EXISTS

    def __init__(self, message: str, topic: str) -> None:
        super().__init__(message, {Key.TOPIC: topic})


class TopicRefusedError(DomainError):
    """The controller refused a topic change (the message says why: the default topic
    cannot be deleted, ...)."""

    reason = Reason.TOPIC_REFUSED

    def __init__(self, message: str, topic: str) -> None:
        super().__init__(message, {Key.TOPIC: topic})


class NoSpaceError(DomainError):
    """The node's disk is full: the write was refused (nothing of it was written) and the
    node keeps serving reads. Retriable: through another node, or here once space is
    freed (the node resumes by itself, no restart)."""

    reason = Reason.NO_SPACE
    retriable = True

    def __init__(self, message: str, node_id: str, directory: str) -> None:
        super().__init__(message, {Key.NODE_ID: node_id, Key.DIRECTORY: directory})


class DiskFailedError(DomainError):
    """The node's disk failed (EIO on a write or an fsync): it takes no writes until it
    is restarted, and has handed leadership over. Retriable on another node."""

    reason = Reason.DISK_FAILED
    retriable = True
    refresh_leader = True


class DataLossError(DomainError):
    """The record at ``offset`` is damaged on this node (it failed its checksum, or its
    range diverged from the replicas'): its bytes are never served. The node repairs it
    from a healthy replica (docs/reliability.md, "Scrub and self-repair"); until then this
    answers every read of it. Retriable: on another node now, or here once repaired."""

    reason = Reason.DATA_LOSS
    retriable = True

    def __init__(self, offset: int, node_id: str = "", detail: str = "") -> None:
        where = f" on node {node_id}" if node_id else ""
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"record at offset {offset} is damaged{where}{why}; it is not served until it is "
            "repaired from a replica: read it from another node or retry later",
            {Key.OFFSET: str(offset), Key.NODE_ID: node_id},
        )
        self.offset, self.node_id = offset, node_id
