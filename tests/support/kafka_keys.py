"""Kafka's own key hashes and the partitions its rule gives them: the reference table the
key-hash tests (tests/api/test_partition_keys.py) and the routing tests
(tests/client/test_partition_routing.py) check against.

``KAFKA_UTILS_TEST`` is Kafka's unit test ``UtilsTest.testMurmur2`` (apache/kafka
``clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java``, read at commit
f55581dc73953c3509a4702433aeeeddc2970779). ``DERIVED_PARTITIONS`` applies Kafka's rule
(``Utils.toPositive(Utils.murmur2(key)) % numPartitions``) by hand to those hashes.
"""

from __future__ import annotations

KAFKA_UTILS_TEST: dict[bytes, int] = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

#: (key, partitions, partition): Kafka's rule on the hashes of KAFKA_UTILS_TEST.
DERIVED_PARTITIONS: list[tuple[bytes, int, int]] = [
    (b"21", 1, 0),
    (b"21", 3, 0),
    (b"21", 12, 0),
    (b"21", 100, 40),
    (b"foobar", 6, 0),
    (b"foobar", 12, 6),
    (b"foobar", 100, 66),
    (b"a-little-bit-long-string", 3, 2),
    (b"a-little-bit-long-string", 12, 8),
    (b"a-little-bit-long-string", 100, 12),
    (b"a-little-bit-longer-string", 6, 5),
    (b"a-little-bit-longer-string", 12, 11),
    (b"a-little-bit-longer-string", 100, 19),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 12, 5),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 100, 77),
    (b"abc", 3, 0),
    (b"abc", 6, 3),
    (b"abc", 100, 7),
]
