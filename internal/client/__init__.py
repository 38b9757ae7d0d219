"""raftlog.client: the Python client of a raftlog cluster.

- :class:`LogClient` (asyncio): ``produce``, ``produce_batch``, ``consume``, ``stream``,
  ``servers``, ``offsets``; automatic batching, retries with backoff and a deadline,
  produce to the leader and consume spread over the followers; the idempotent producer
  (a producer id per client, a sequence per request, reused by its retries) so that a
  retried produce is never appended twice.
- Topics and partitions: ``produce_to`` (one partition, by key or number), ``produce_keyed``
  (a batch of keyed records, one request per partition, concurrently), ``consume_from``,
  ``stream_from``, ``partition_offsets``, ``partitions`` (GetPartitions); each partition's
  writes go to its leader, from a per-topic cache (:mod:`~raftlog.client.topics`).
- :class:`SyncLogClient`: the same calls for scripts without an event loop.
- :class:`ClientConfig`: every setting, with its unit and default.
- :mod:`~raftlog.client.errors`: what can go wrong, and whether the client retries it.

Internals: :mod:`~raftlog.client.resolver` (who is in the cluster, one channel per server),
:mod:`~raftlog.client.picker` (which server gets a call), :mod:`~raftlog.client.batcher`
(coalescing ``produce()`` calls). The manual is ``docs/client.md``.
"""

from raftlog.client.client import (
    ClientStats,
    LogClient,
    Offsets,
    PartitionOffset,
    Produced,
    Record,
    parse_addrs,
)
from raftlog.client.config import ClientConfig, ClientConfigError
from raftlog.client.errors import (
    AttemptTimeoutError,
    ClientClosedError,
    ClientError,
    DeadlineExceededError,
    InvalidArgumentError,
    NoServersError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PartialProduceError,
    PermissionDeniedError,
    SequenceTooOldError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
    UnknownTopicError,
)
from raftlog.client.resolver import ServerInfo
from raftlog.client.sync import SyncLogClient
from raftlog.client.topics import DEFAULT_TOPIC, PartitionInfo, TopicCache, TopicPartitions

__all__ = [
    "DEFAULT_TOPIC",
    "AttemptTimeoutError",
    "ClientClosedError",
    "ClientConfig",
    "ClientConfigError",
    "ClientError",
    "ClientStats",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "LogClient",
    "NoServersError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "Offsets",
    "PartialProduceError",
    "PartitionInfo",
    "PartitionOffset",
    "PermissionDeniedError",
    "Produced",
    "Record",
    "SequenceTooOldError",
    "ServerError",
    "ServerInfo",
    "SyncLogClient",
    "TopicCache",
    "TopicPartitions",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownTopicError",
    "parse_addrs",
]
