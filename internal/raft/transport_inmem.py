"""An in-memory Raft transport with fault injection, for tests and simulations.

One :class:`InmemNetwork` routes payloads between the :class:`InmemTransport` objects it
created. Every payload goes through one scheduler: faults are decided when it is sent
(drop, duplicate, delay, reorder), connectivity (partitions, disconnected nodes, closed
transports) is checked both when it is sent and when it is delivered, so a partition also
cuts payloads already in flight, as a real network would.

Time has two modes:

- *asyncio mode* (default): delivery times are on the running loop's clock; a single timer
  delivers due payloads. Without faults a payload is delivered on the next loop iteration.
- *manual mode* (``manual=True``): nothing happens until the owner calls
  :meth:`InmemNetwork.advance` or :meth:`InmemNetwork.run_until_idle`. With the same seed and
  the same calls, delivery order is identical from run to run: every random choice comes from
  the network's seeded :class:`random.Random`, ties are broken by send order.

Payloads without reorder keep per-link FIFO order even with random delays: a payload is
never scheduled before the previous one on the same (sender, receiver) link.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from raftlog.raft.transport import (
    DEFAULT_MAX_FRAME_SIZE,
    Handler,
    TransportConfigError,
    TransportError,
    TransportStats,
    deliver,
    validate_max_frame_size,
)

log = logging.getLogger("raftlog.raft.transport")

#: Default bound of payloads in flight from one transport to one peer (the in-memory
#: counterpart of the TCP transport's per-peer outbound queue).
DEFAULT_INMEM_QUEUE_SIZE = 1024


class AddressInUseError(TransportError):
    """Another open in-memory transport already holds this address."""


@dataclass(frozen=True)
class Faults:
    """Fault probabilities and delays applied to every payload the network carries.

    All probabilities are in [0, 1] and drawn from the network's seeded random generator.
    """

    #: Probability that a payload is silently lost. Default 0.
    drop_rate: float = 0.0
    #: Probability that a payload is delivered twice (the copy gets its own delay). Default 0.
    duplicate_rate: float = 0.0
    #: Smallest and largest delivery delay, in seconds, drawn uniformly. Default (0, 0).
    min_delay: float = 0.0
    max_delay: float = 0.0
    #: Probability that a payload ignores per-link FIFO order and gets an extra uniform
    #: delay in [0, ``reorder_delay``] seconds, so later payloads may overtake it. Default 0.
    reorder_rate: float = 0.0
    #: Largest extra delay of a reordered payload, in seconds. Default 0.01.
    reorder_delay: float = 0.01

    def validate(self) -> None:
        """Check ranges; the message names the field and the value."""
        for name in ("drop_rate", "duplicate_rate", "reorder_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise TransportConfigError(f"faults.{name} must be within [0, 1], got {value}")
        for name in ("min_delay", "max_delay", "reorder_delay"):
            value = getattr(self, name)
            if value < 0:
                raise TransportConfigError(f"faults.{name} must be >= 0 seconds, got {value}")
        if self.max_delay < self.min_delay:
            raise TransportConfigError(
                f"faults.max_delay ({self.max_delay} s) must be >= "
                f"faults.min_delay ({self.min_delay} s)"
            )


#: A predicate over (sender id, receiver id, payload); True drops the payload.
DropPredicate = Callable[[str, str, bytes], bool]


@dataclass(order=True)
class _Envelope:
    deliver_at: float
    seq: int
    src: str = field(compare=False)
    dst: str = field(compare=False)
    #: The transport that held the address when the payload was sent: a payload in flight
    #: to a node that restarts meanwhile is lost with the old incarnation, as on TCP.
    target: InmemTransport | None = field(compare=False)
    payload: bytes = field(compare=False)


class InmemNetwork:
    """A simulated network: creates transports, routes their payloads, injects faults.

    ``seed`` (int or a ready ``random.Random``) drives every random choice. ``manual``
    selects manual time (see the module docstring). ``queue_size`` (default 1024) bounds the
    payloads in flight per (sender, receiver); beyond it ``send`` drops and counts.
    """

    def __init__(
        self,
        seed: int | random.Random = 0,
        *,
        manual: bool = False,
        queue_size: int = DEFAULT_INMEM_QUEUE_SIZE,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if queue_size < 1:
            raise TransportConfigError(f"queue_size must be >= 1 payload, got {queue_size}")
        validate_max_frame_size(max_frame_size)
        self.random = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.manual = manual
        self.queue_size = queue_size
        self.max_frame_size = max_frame_size
        self._faults = Faults()
        self._drop_if: DropPredicate | None = None
        self._by_address: dict[str, InmemTransport] = {}
        self._heap: list[_Envelope] = []
        self._seq = 0
        self._now_ns = 0  # manual clock, integer nanoseconds: 9 ms + 1 ms is exactly 10 ms
        self._link_tail: dict[tuple[str, str], float] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._groups: list[frozenset[str]] | None = None
        self._disconnected: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ----------------------------------------------------------------- creation

    def transport(self, node_id: str, address: str | None = None) -> InmemTransport:
        """A new transport for ``node_id`` reachable at ``address`` (default: the id).

        A restarted node gets a fresh transport; it may reuse its old address once the old
        transport is closed, or take a new one (peers then need ``update_peers``).
        """
        addr = node_id if address is None else address
        held = self._by_address.get(addr)
        if held is not None and not held.closed:
            raise AddressInUseError(f"address {addr!r} is held by open transport {held.node_id!r}")
        t = InmemTransport(self, node_id, addr)
        self._by_address[addr] = t
        return t

    def connect_all(self) -> None:
        """Give every open transport the addresses of all the others (a full mesh)."""
        open_ = [t for t in self._by_address.values() if not t.closed]
        table = {t.node_id: t.address for t in open_}
        for t in open_:
            t.update_peers({k: v for k, v in table.items() if k != t.node_id})

    # ----------------------------------------------------------------- faults

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(
        self, faults: Faults | None = None, drop_if: DropPredicate | None = None
    ) -> None:
        """Replace the fault settings (``None`` means no faults) and the drop predicate."""
        f = faults or Faults()
        f.validate()
        self._faults = f
        self._drop_if = drop_if

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: each group of node ids is an island; unlisted nodes form one more.

        Payloads cross only within an island, including those already in flight.
        """
        sets = [frozenset(g) for g in groups]
        seen: set[str] = set()
        for s in sets:
            if seen & s:
                raise ValueError(f"partition groups overlap on {sorted(seen & s)}")
            seen |= s
        self._groups = sets

    def disconnect(self, node_id: str) -> None:
        """Cut ``node_id`` off from everyone, both directions, until reconnect() or heal()."""
        self._disconnected.add(node_id)

    def reconnect(self, node_id: str) -> None:
        """Undo :meth:`disconnect` for one node (partitions stay)."""
        self._disconnected.discard(node_id)

    def heal(self) -> None:
        """Remove every partition and disconnection (fault probabilities stay)."""
        self._groups = None
        self._disconnected.clear()

    def reachable(self, src: str, dst: str) -> bool:
        """Whether a payload from ``src`` to ``dst`` may cross the network now."""
        if src in self._disconnected or dst in self._disconnected:
            return False
        if self._groups is None:
            return True
        return self._island(src) == self._island(dst)

    def _island(self, node_id: str) -> int:
        for i, group in enumerate(self._groups or ()):
            if node_id in group:
                return i
        return -1

    # ----------------------------------------------------------------- time

    @property
    def now(self) -> float:
        """Current network time in seconds (manual clock, or the running loop's clock)."""
        if self.manual:
            return self._now_ns / 1e9
        return asyncio.get_running_loop().time()

    def pending(self) -> int:
        """Payloads scheduled and not yet delivered or discarded."""
        return len(self._heap)

    def advance(self, seconds: float) -> int:
        """Manual mode: move the clock forward and deliver what is due; returns deliveries."""
        if not self.manual:
            raise RuntimeError("advance() is for manual mode; asyncio mode follows the loop clock")
        if seconds < 0:
            raise ValueError(f"cannot move time backwards ({seconds} s)")
        self._now_ns += round(seconds * 1e9)
        return self._deliver_due(self.now)

    def run_until_idle(self, max_deliveries: int = 1_000_000) -> int:
        """Manual mode: deliver everything scheduled, advancing time to each delivery.

        Payloads sent by handlers during delivery are delivered too; ``max_deliveries``
        bounds the loop (a ping-pong pair of handlers would otherwise never finish).
        """
        if not self.manual:
            raise RuntimeError("run_until_idle() is for manual mode")
        delivered = 0
        while self._heap and delivered < max_deliveries:
            self._now_ns = max(self._now_ns, round(self._heap[0].deliver_at * 1e9))
            delivered += self._deliver_due(self.now, limit=max_deliveries - delivered)
        return delivered

    async def close(self) -> None:
        """Close every transport and forget what is in flight."""
        for t in list(self._by_address.values()):
            await t.close()
        self._heap.clear()
        self._in_flight.clear()
        self._cancel_timer()

    # ----------------------------------------------------------------- routing

    def _submit(self, src: InmemTransport, dst_id: str, dst_address: str, payload: bytes) -> None:
        target = self._by_address.get(dst_address)
        link = (src.node_id, dst_id)
        if self._in_flight.get(link, 0) >= self.queue_size:
            src._stats.dropped_queue_full += 1
            return
        src._stats.enqueued += 1
        if not self.reachable(src.node_id, dst_id):
            src._stats.dropped_fault += 1
            return
        f = self._faults
        rnd = self.random
        if self._drop_if is not None and self._drop_if(src.node_id, dst_id, payload):
            src._stats.dropped_fault += 1
            return
        if f.drop_rate and rnd.random() < f.drop_rate:
            src._stats.dropped_fault += 1
            return
        copies = 1
        if f.duplicate_rate and rnd.random() < f.duplicate_rate:
            copies = 2
            src._stats.duplicated += 1
        for _ in range(copies):
            delay = f.min_delay
            if f.max_delay > f.min_delay:
                delay = rnd.uniform(f.min_delay, f.max_delay)
            reorder = bool(f.reorder_rate) and rnd.random() < f.reorder_rate
            if reorder:
                delay += rnd.uniform(0.0, f.reorder_delay)
            at = self._time_after(delay)
            if not reorder:
                at = max(at, self._link_tail.get(link, at))
                self._link_tail[link] = at
            self._seq += 1
            heapq.heappush(
                self._heap, _Envelope(at, self._seq, src.node_id, dst_id, target, payload)
            )
            self._in_flight[link] = self._in_flight.get(link, 0) + 1
        if not self.manual:
            self._arm_timer()

    def _time_after(self, delay: float) -> float:
        if self.manual:
            return (self._now_ns + round(delay * 1e9)) / 1e9
        return asyncio.get_running_loop().time() + delay

    def _deliver_due(self, now: float, limit: int | None = None, max_seq: int | None = None) -> int:
        delivered = 0
        while self._heap and self._heap[0].deliver_at <= now:
            if limit is not None and delivered >= limit:
                break
            if max_seq is not None and self._heap[0].seq > max_seq:
                break  # sent by a handler during this round: next loop iteration
            env = heapq.heappop(self._heap)
            link = (env.src, env.dst)
            left = self._in_flight.get(link, 1) - 1
            if left:
                self._in_flight[link] = left
            else:
                self._in_flight.pop(link, None)
                self._link_tail.pop(link, None)
            dst = env.target
            if dst is None or dst.closed or not dst.started or dst.node_id != env.dst:
                continue
            if not self.reachable(env.src, env.dst):
                dst._stats.dropped_fault += 1
                continue
            dst._receive(env.payload)
            delivered += 1
        return delivered

    def _arm_timer(self) -> None:
        if not self._heap:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self._timer is not None:
            if self._timer.when() <= self._heap[0].deliver_at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(self._heap[0].deliver_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        # Payloads sent by handlers during this round wait for the next loop iteration, so
        # two handlers answering each other with no delay cannot monopolise the loop.
        self._deliver_due(self._loop.time(), max_seq=self._seq)
        if self._heap and any(not t.closed for t in self._by_address.values()):
            self._arm_timer()
        elif not any(not t.closed for t in self._by_address.values()):
            self._heap.clear()
            self._in_flight.clear()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _transport_closed(self) -> None:
        if not self.manual and not any(not t.closed for t in self._by_address.values()):
            self._cancel_timer()
            self._heap.clear()
            self._in_flight.clear()


class InmemTransport:
    """One node's endpoint on an :class:`InmemNetwork`; implements the Transport protocol."""

    def __init__(self, network: InmemNetwork, node_id: str, address: str) -> None:
        self._network = network
        self._node_id = node_id
        self.address = address
        self._peers: dict[str, str] = {}
        self._handler: Handler | None = None
        self._stats = TransportStats()
        self.started = False
        self.closed = False

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def network(self) -> InmemNetwork:
        return self._network

    async def start(self) -> None:
        if self.closed:
            raise TransportError(f"transport {self._node_id!r} is closed; create a new one")
        self.started = True

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._network._transport_closed()

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        self._peers = {k: v for k, v in addresses.items() if k != self._node_id}

    def peers(self) -> dict[str, str]:
        """A copy of the peer table (node id -> address)."""
        return dict(self._peers)

    def send(self, to: str, payload: bytes) -> None:
        if not self.started or self.closed:
            self._stats.dropped_closed += 1
            return
        address = self._peers.get(to)
        if address is None:
            self._stats.dropped_unknown_peer += 1
            return
        if len(payload) > self._network.max_frame_size:
            self._stats.dropped_too_large += 1
            log.error(
                "raft transport %s: dropped a %d-byte payload to %s: above max frame size %d",
                self._node_id,
                len(payload),
                to,
                self._network.max_frame_size,
            )
            return
        self._network._submit(self, to, address, bytes(payload))

    def stats(self) -> TransportStats:
        return self._stats.copy()

    def _receive(self, payload: bytes) -> None:
        deliver(self._handler, payload, self._stats, self._node_id)
