"""Metrics read at scrape time: a Prometheus collector over plain callables.

Most of a node's numbers already exist as attributes (Raft's term and indexes, the mux's
counters, the commit log's offsets). Rather than copying each into a Gauge on every change
(work on the hot path), a :class:`CallbackCollector` asks for them when Prometheus scrapes:
the cost moves to the scrape, once every few seconds.

The callables run on the event loop that serves ``/metrics`` (the node's own), so they may
read asyncio-owned state without locks; they must be quick and must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("raftlog.telemetry")

#: What a callback returns: one value (no labels), or label values -> value.
Sample = float | Mapping[tuple[str, ...], float]


@dataclass(frozen=True)
class _Family:
    name: str
    documentation: str
    kind: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    read: Callable[[], Sample | None]


class CallbackCollector(Collector):
    """Gauges and counters whose values come from callables at scrape time.

    A callback that raises (the part it reads is closing, say) or returns None (the part
    is not there: no Serf with static peers, not the leader) gives its family without
    samples in that scrape (its HELP and TYPE lines only), rather than failing the scrape.
    """

    def __init__(self) -> None:
        self._families: list[_Family] = []

    def gauge(
        self,
        name: str,
        documentation: str,
        read: Callable[[], Sample | None],
        labels: Sequence[str] = (),
    ) -> None:
        """Add gauge ``name`` whose value(s) ``read()`` returns."""
        self._families.append(_Family(name, documentation, "gauge", tuple(labels), read))

    def counter(
        self,
        name: str,
        documentation: str,
        read: Callable[[], Sample | None],
        labels: Sequence[str] = (),
    ) -> None:
        """Add counter ``name`` (without the ``_total`` suffix, which the exposition adds)
        whose running total(s) ``read()`` returns."""
        if name.endswith("_total"):
            raise ValueError(f"counter {name!r}: give the name without _total")
        self._families.append(_Family(name, documentation, "counter", tuple(labels), read))

    def describe(self) -> Iterable[Metric]:
        # Describing without reading: the callbacks may not be ready at registration.
        for family in self._families:
            yield self._empty(family)

    @staticmethod
    def _empty(family: _Family) -> Metric:
        if family.kind == "counter":
            return CounterMetricFamily(family.name, family.documentation, labels=family.labels)
        return GaugeMetricFamily(family.name, family.documentation, labels=family.labels)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            try:
                value = family.read()
            except Exception as exc:  # one part failing must not hide every other metric
                logger.debug("metric %s not read: %r", family.name, exc)
                value = None
            metric = self._empty(family)
            if value is None:
                yield metric
                continue
            if isinstance(value, Mapping):
                for label_values, v in value.items():
                    metric.add_metric(list(label_values), float(v))  # type: ignore[attr-defined]
            else:
                metric.add_metric([], float(value))  # type: ignore[attr-defined]
            yield metric
