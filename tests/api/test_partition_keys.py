"""raftlog.api.partitioning: Kafka's murmur2 and its keyed-record partition rule.

Every expected value below comes from Kafka or from Java running Kafka's function, never
from the code under test:

- ``KAFKA_UTILS_TEST`` (in ``support/kafka_keys.py``, shared with the routing tests):
  Kafka's own unit test, ``UtilsTest.testMurmur2`` in
  apache/kafka ``clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java``
  (read at commit f55581dc73953c3509a4702433aeeeddc2970779).
- :data:`JAVA_GENERATED`: the table of kafkajs' Java-compatible murmur2 test, tulios/kafkajs
  ``src/producer/partitioners/defaultJava/murmur2.spec.js``, which says it was generated
  with a Java program running Kafka's ``Utils.murmur2`` (the repository keeps one such
  program as ``src/producer/partitioners/default/Test.java``, printing the first 16 keys).
- :data:`JAVA_PARTITIONS_OF_1000`: dpkp/kafka-python ``test/test_partitioner.py``,
  ``test_murmur2_java_compatibility``: the partitions of six keys on a 1000-partition topic,
  "compare[d] with output from Kafka's org.apache.kafka.clients.producer.Partitioner".
- ``DERIVED_PARTITIONS`` (``support/kafka_keys.py``): Kafka's rule
  (``BuiltInPartitioner.partitionForKey``:
  ``Utils.toPositive(Utils.murmur2(key)) % numPartitions``, ``toPositive`` being
  ``& 0x7fffffff``) applied by hand to the hashes of Kafka's own test; a test recomputes
  each row from :data:`KAFKA_UTILS_TEST` with that rule, independently of ``murmur2``.
"""

from __future__ import annotations

import random

import pytest

from raftlog.api.partitioning import murmur2, partition_for_key
from support.kafka_keys import DERIVED_PARTITIONS, KAFKA_UTILS_TEST

JAVA_GENERATED: dict[bytes, int] = {
    b"0": 971027396,
    b"1": -1993445489,
    b"128": -326012175,
    b"2187": -1508407203,
    b"16384": -325739742,
    b"78125": -1654490814,
    b"279936": 1462227128,
    b"823543": -2014198330,
    b"2097152": 607668903,
    b"4782969": -1182699775,
    b"10000000": -1830336757,
    b"19487171": -1603849305,
    b"35831808": -857013643,
    b"62748517": -1167431028,
    b"105413504": -381294639,
    b"170859375": -1658323481,
    b"100:48069": 1009543857,
}

#: key -> its partition on a topic of 1000 partitions, per Kafka's Java partitioner.
JAVA_PARTITIONS_OF_1000: dict[bytes, int] = {
    b"": 681,
    b"a": 524,
    b"ab": 434,
    b"abc": 107,
    b"123456789": 566,
    b"\x00 ": 742,
}


@pytest.mark.parametrize(("key", "expected"), sorted(KAFKA_UTILS_TEST.items()))
def test_murmur2_matches_kafkas_own_unit_test(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_GENERATED.items()))
def test_murmur2_matches_values_printed_by_kafkas_java_function(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_PARTITIONS_OF_1000.items()))
def test_partitions_of_1000_match_kafkas_java_partitioner(key: bytes, expected: int) -> None:
    # b"" is in the Java table; partition_for_key refuses an empty key, so the rule is
    # applied to the hash directly for that row (and through partition_for_key otherwise).
    assert (murmur2(key) & 0x7FFFFFFF) % 1000 == expected
    if key:
        assert partition_for_key(key, 1000) == expected


@pytest.mark.parametrize(("key", "partitions", "expected"), DERIVED_PARTITIONS)
def test_reference_table_of_partitions(key: bytes, partitions: int, expected: int) -> None:
    # The row itself follows from Kafka's published hash and Kafka's rule...
    assert (KAFKA_UTILS_TEST[key] & 0x7FFFFFFF) % partitions == expected
    # ... and partition_for_key agrees.
    assert partition_for_key(key, partitions) == expected


def test_to_positive_clears_the_sign_bit_rather_than_taking_abs() -> None:
    # -790332482 ("foobar") & 0x7fffffff is 2**31 - 790332482, not 790332482: with abs()
    # the key would land on partition 790332482 % 100 = 82 instead of Kafka's 66.
    assert murmur2(b"foobar") & 0x7FFFFFFF == 2**31 - 790332482
    assert partition_for_key(b"foobar", 100) == 66 != abs(murmur2(b"foobar")) % 100


def test_murmur2_is_a_signed_32_bit_int_and_partitions_are_in_range() -> None:
    rng = random.Random(20261206)
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(1, 40))
        h = murmur2(key)
        assert -(2**31) <= h < 2**31
        partitions = rng.randrange(1, 64)
        assert 0 <= partition_for_key(key, partitions) < partitions
        assert partition_for_key(key, partitions) == partition_for_key(key, partitions)


def test_one_partition_takes_every_key() -> None:
    assert {partition_for_key(bytes([b]) * 5, 1) for b in range(256)} == {0}


@pytest.mark.parametrize("partitions", [0, -1, -1000])
def test_fewer_than_one_partition_is_refused(partitions: int) -> None:
    with pytest.raises(ValueError, match="at least 1 partition"):
        partition_for_key(b"abc", partitions)


def test_an_empty_key_is_refused_the_caller_places_keyless_records() -> None:
    with pytest.raises(ValueError, match="empty key"):
        partition_for_key(b"", 3)
