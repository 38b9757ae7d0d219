"""ProducerTable and ProducerConfig alone: bounds, validation, persistence format."""

from __future__ import annotations

import pytest

from raftlog.domain.errors import SequenceTooOldError
from raftlog.domain.producers import (
    ProducerConfig,
    ProducerConfigError,
    ProducerTable,
    producer_id_problem,
)


def test_config_is_validated_with_plain_words() -> None:
    for bad, words in (
        (ProducerConfig(window=0), "window must be a positive integer"),
        (ProducerConfig(max_producers=-1), "max_producers must be a positive integer"),
        (ProducerConfig(expiry_s=0), "expiry_s must be a positive number of seconds"),
        (ProducerConfig(expiry_s=float("inf")), "expiry_s"),
    ):
        with pytest.raises(ProducerConfigError, match=words):
            bad.validate()


def test_producer_id_problems() -> None:
    assert producer_id_problem("", 0) == ""
    assert producer_id_problem("p", 1) == ""
    assert "empty" in producer_id_problem("", 1)
    assert ">= 1" in producer_id_problem("p", 0)
    assert "65 bytes" in producer_id_problem("p" * 65, 1)


def test_lru_cap_expiry_boundary_and_round_trip() -> None:
    table = ProducerTable(ProducerConfig(window=2, max_producers=2, expiry_s=1))
    table.advance(1000)
    table.record("a", 1, 0, 0)
    table.record("b", 1, 1, 1)
    assert table.check("a", 1) == (0, 0)  # "a" is now the most recently seen
    table.record("c", 1, 2, 2)  # full: "b" (least recently seen) goes
    assert "b" not in table and "a" in table and table.evicted == 1
    table.advance(2000)  # "a" and "c" last seen at 1000: exactly 1 s idle is kept
    assert len(table) == 2
    table.advance(2001)
    assert len(table) == 0 and table.expired == 2
    table.advance(5)  # the clock never goes back
    assert table.clock_ms == 2001
    table.record("p", 5, 3, 4)
    table.record("p", 9, 5, 5)
    table.record("p", 7, 6, 6)  # window 2 keeps 7 and 9
    with pytest.raises(SequenceTooOldError):
        table.check("p", 5)
    assert table.check("p", 8) is None  # new: above the oldest remembered
    copy = ProducerTable(table.config)
    copy.load(table.dump())
    assert copy.dump() == table.dump() and copy.lookup("p", 9) == (5, 5)
    with pytest.raises(ValueError, match="malformed producer table"):
        copy.load({"clock_ms": 1, "producers": [[1, 2, []]]})
