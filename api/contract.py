"""The wire contract beside ``log.proto``: the names both ends of a call must agree on.

Servers, forwarding followers and clients all read these from here, so a name is spelled
once. The module is pure (standard library only): a client can import it without the node's
code, and so can every layer of the node.

- :data:`ERROR_DOMAIN`, :class:`Reason`, :class:`Key`: the ``google.rpc.ErrorInfo`` that every
  raftlog error carries in its rich status (trailing metadata :data:`STATUS_DETAILS_KEY`),
  its ``domain``, its ``reason`` and the keys of its string ``metadata``
  (:mod:`raftlog.api.status` encodes and decodes it).
- :data:`FORWARDED_KEY`: the call-metadata header a follower puts on a Produce it forwards to
  the leader.
- :data:`ADMIN_SERVICE`: the full name of the admin service, beside ``log.v1.Log``.
- :class:`Action` and :data:`OBJECT_WILDCARD`: the ACL's action names and the object of every
  check (the Casbin policy files name them too).
"""

from __future__ import annotations

from typing import Final

#: ``ErrorInfo.domain`` of every raftlog error.
ERROR_DOMAIN: Final = "raftlog"
#: Trailing-metadata key of the rich status (the gRPC convention; a binary header).
STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
#: Call-metadata header (value ``"1"``) of a Produce a follower forwards to the leader. A node
#: never forwards a marked call again, and the leader requires :attr:`Action.REPLICATE` of
#: the caller for it (peer traffic).
FORWARDED_KEY: Final = "x-raftlog-forwarded"
#: Full name of the admin service (``api/admin/v1/admin.proto``); every rpc of it needs
#: :attr:`Action.ADMIN`.
ADMIN_SERVICE: Final = "raftlog.admin.v1.Admin"
#: Full name of the service the nodes of a cluster call each other on (controller commands,
#: replica states); every rpc of it needs :attr:`Action.REPLICATE` (peer traffic).
CLUSTER_SERVICE: Final = "raftlog.admin.v1.Cluster"


class Reason:
    """``ErrorInfo.reason`` values: what went wrong, finer than the status code."""

    INTERNAL: Final = "INTERNAL"
    INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"
    #: A record or a batch is larger than the server's message size limit.
    RECORD_TOO_LARGE: Final = "RECORD_TOO_LARGE"
    #: The request bytes do not parse as the method's request message.
    UNDECODABLE_REQUEST: Final = "UNDECODABLE_REQUEST"
    #: Metadata :attr:`Key.OFFSET`, :attr:`Key.LOWEST`, :attr:`Key.HIGHEST`.
    OFFSET_OUT_OF_RANGE: Final = "OFFSET_OUT_OF_RANGE"
    UNAUTHENTICATED: Final = "UNAUTHENTICATED"
    PERMISSION_DENIED: Final = "PERMISSION_DENIED"
    UNAVAILABLE: Final = "UNAVAILABLE"
    #: Metadata :attr:`Key.LEADER_ID` and :attr:`Key.LEADER_ADDR` (empty when unknown).
    NOT_LEADER: Final = "NOT_LEADER"
    DEADLINE_EXCEEDED: Final = "DEADLINE_EXCEEDED"
    #: Metadata :attr:`Key.PRODUCER_ID`, :attr:`Key.SEQUENCE`, :attr:`Key.OLDEST`.
    SEQUENCE_TOO_OLD: Final = "SEQUENCE_TOO_OLD"
    UNSUPPORTED: Final = "UNSUPPORTED"
    STORAGE: Final = "STORAGE"
    #: An admin call names a node that is not a member. Metadata :attr:`Key.NODE_ID`.
    NOT_MEMBER: Final = "NOT_MEMBER"
    #: An admin call cannot be done in the cluster's present state (a transfer to a
    #: learner, another membership change in progress, ...); the message says why.
    ADMIN_REFUSED: Final = "ADMIN_REFUSED"
    #: The node's disk is full; metadata :attr:`Key.NODE_ID` and :attr:`Key.DIRECTORY`.
    NO_SPACE: Final = "NO_SPACE"
    #: The node's disk failed (EIO): it takes no writes until restarted; metadata
    #: :attr:`Key.NODE_ID` and :attr:`Key.DIRECTORY`.
    DISK_FAILED: Final = "DISK_FAILED"
    #: A stored record failed its checksum (or diverged from the other replicas) on this
    #: node: it is never served until repaired from a replica. Metadata :attr:`Key.OFFSET`
    #: and :attr:`Key.NODE_ID`; the same offset may be read from another node meanwhile.
    DATA_LOSS: Final = "DATA_LOSS"
    #: The topic (or its partition) does not exist. Metadata :attr:`Key.TOPIC`.
    UNKNOWN_TOPIC: Final = "UNKNOWN_TOPIC"
    #: CreateTopic of a name that exists. Metadata :attr:`Key.TOPIC`.
    TOPIC_EXISTS: Final = "TOPIC_EXISTS"
    #: The controller refused a topic change in the cluster's present state (deleting the
    #: default topic, ...); the message says why. Metadata :attr:`Key.TOPIC`.
    TOPIC_REFUSED: Final = "TOPIC_REFUSED"


class Key:
    """Keys of ``ErrorInfo.metadata`` (values are strings; numbers in decimal)."""

    OFFSET: Final = "offset"
    LOWEST: Final = "lowest"
    HIGHEST: Final = "highest"
    SIZE: Final = "size"
    LIMIT: Final = "limit"
    SUBJECT: Final = "subject"
    ACTION: Final = "action"
    OBJECT: Final = "object"
    #: The leader's node id.
    LEADER_ID: Final = "leader_id"
    #: The leader's rpc address (host:port), the one spelling servers send and clients read.
    LEADER_ADDR: Final = "leader_addr"
    PRODUCER_ID: Final = "producer_id"
    SEQUENCE: Final = "sequence"
    #: The oldest sequence the server remembers for the producer.
    OLDEST: Final = "oldest"
    METHOD: Final = "method"
    MESSAGE_TYPE: Final = "message_type"
    #: Position of the bad message in a request stream.
    INDEX: Final = "index"
    #: The node an error is about (its Raft id).
    NODE_ID: Final = "node_id"
    #: A directory on that node (its data directory).
    DIRECTORY: Final = "directory"
    #: A topic name.
    TOPIC: Final = "topic"


#: Object of every ACL check: the book authorizes on the whole log.
OBJECT_WILDCARD: Final = "*"


class Action:
    """The ACL's actions (the ``act`` of a Casbin policy line)."""

    PRODUCE: Final = "produce"
    CONSUME: Final = "consume"
    #: Peer traffic: forwarded writes (and the cluster's peer methods).
    REPLICATE: Final = "replicate"
    #: The admin service ``raftlog.admin.v1.Admin`` (status, leadership transfer, member
    #: removal, snapshots); the example policy grants it to ``root`` only.
    ADMIN: Final = "admin"
