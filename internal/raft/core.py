"""The Raft consensus core: a deterministic state machine with no I/O and no clock.

The runtime feeds it inputs (``tick``, ``step``, ``propose``, ...) and drives it with the
Ready/advance cycle (see docs/raft.md)::

    while core.has_ready():
        rd = core.ready()
        send(rd.messages_before_persist)                  # may go before the fsync
        persist(rd.hard_state, rd.snapshot, rd.entries)   # fsync if rd.must_sync
        send(rd.messages_after_persist)                   # only once that is durable
        apply(rd.snapshot, rd.committed_entries)          # to the state machine
        core.advance(rd)

The core states which messages may leave before the fsync (persist-before-send, with the
leader's exception of the Raft thesis §10.2.1): only a leader's AppendEntries, heartbeats
and TimeoutNow of a term that is already durable, and none in a Ready that installs a
snapshot. The leader counts its own log towards commit only after ``advance`` says its
entries are durable, so a crash before the fsync loses nothing acknowledged. Votes, vote
and append responses, and every message of a new term wait for the fsync: a promise must
never outlive a crash that forgot it. A runtime may also send everything after the fsync.

Time only enters through ``tick()``; randomness only through the injected ``random.Random``.
Given the same inputs and seed, the core always produces the same outputs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from raftlog.raft import quorum
from raftlog.raft.bootstrap import bootstrap_state, check_can_bootstrap
from raftlog.raft.codec import decode_conf_change_record, encode_conf_change_record
from raftlog.raft.confchange import apply_change
from raftlog.raft.config import RaftConfig
from raftlog.raft.errors import (
    ConfChangeInProgressError,
    LeadershipTransferInProgressError,
    NotLeaderError,
    ReadyOutstandingError,
    SnapshotError,
    TransferError,
)
from raftlog.raft.log_view import RaftLog
from raftlog.raft.readindex import ReadOnlyQueue
from raftlog.raft.ready import EARLY_TYPES, PeerStatus, Ready, Status
from raftlog.raft.tracker import Inflights, Progress, ProgressState
from raftlog.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeRecord,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MessageType,
    NodeId,
    PersistentState,
    ProposalTicket,
    ReadState,
    Role,
    SnapshotMeta,
    SoftState,
)

TRANSFER_CONTEXT = b"raft:transfer"
"""Context of a vote request caused by TimeoutNow: voters ignore their leader lease for it."""

_VOTE_RESP = {
    MessageType.VOTE: MessageType.VOTE_RESP,
    MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP,
}


#: Messages only a leader sends: the receiver follows their sender.
_FROM_LEADER = (
    MessageType.APPEND,
    MessageType.HEARTBEAT,
    MessageType.SNAPSHOT,
    MessageType.QUIESCE,
)


class RaftCore:
    """One Raft node's protocol state. See the module docstring and docs/raft.md.

    Build it with ``RaftCore(config, state, rng)``: ``state`` is what the stores hold
    (``PersistentState()`` or the result of :func:`bootstrap_state` for a new node); ``rng``
    is the only source of randomness (election timeouts); pass a seeded one for
    reproducibility. The runtime must restore the state machine from ``state.snapshot``
    before building the core, and pass the index it reflects as ``state.applied``.
    """

    def __init__(
        self,
        config: RaftConfig,
        state: PersistentState | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config.validate()
        self.id: NodeId = config.id
        self._rng = rng if rng is not None else random.Random(config.id)
        st = state if state is not None else PersistentState()
        self.log = RaftLog(st.snapshot, st.entries, st.hard_state.commit, st.applied)
        self.term = st.hard_state.term
        self.vote: NodeId = st.hard_state.vote
        self.lead: NodeId = NO_NODE
        self.role = Role.FOLLOWER
        # Membership: the newest CONF_CHANGE entry in the log wins (effective when appended);
        # below the log, the snapshot's membership.
        snap = self.log.snapshot
        self._base_conf: tuple[int, Membership] = (
            (snap.index, snap.membership) if snap is not None else (0, Membership())
        )
        self._confs: list[tuple[int, Membership]] = []
        self.membership = Membership()
        self._scan_confs(self.log.offset)
        self.log.listener = self._on_log_append
        self._prs: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_tick
        self._transferee: NodeId = NO_NODE
        self._pending_conf_index = 0
        self._term_start = 0
        self._reads = ReadOnlyQueue()
        self._reads_waiting: list[bytes] = []
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._needs_bcast = False
        self._commit_unsent = False
        self._prev_hs = self._hard_state()
        self._prev_ss: SoftState | None = None
        self._outstanding: Ready | None = None
        #: quiet: no heartbeats sent (leader) or no election time counted (follower) until
        #: a message, a proposal or wake_quiesced (RaftConfig.quiesce_after_ticks)
        self.quiesced = False
        self._idle_ticks = 0
        self._become_follower(self.term, NO_NODE)

    # ===================================================================================
    # Inputs
    # ===================================================================================

    def tick(self) -> None:
        """Advance logical time by one tick (the runtime calls this at a fixed interval).

        A quiesced node does nothing: its runtime may stop ticking it until it wakes."""
        if self.quiesced:
            return
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._promotable() and self._election_elapsed >= self._randomized_timeout:
                self._election_elapsed = 0
                self._hup(transfer=False)

    def campaign(self) -> None:
        """Start an election now (through pre-vote if enabled), as if the timer had fired."""
        if self.role is not Role.LEADER and self._promotable():
            self._hup(transfer=False)

    def step(self, m: Message) -> None:
        """Feed one message from a peer (or, for SNAPSHOT, from the runtime once the snapshot
        data has been fully received and stored). Messages for another node are ignored.
        Any message but QUIESCE wakes a quiesced node."""
        if m.dst != self.id or m.src == self.id:
            return
        if self.quiesced and not self._quiet_message(m):
            self._unquiesce()
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                force = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.config.check_quorum
                    and self.lead != NO_NODE
                    and self._election_elapsed < self.config.election_tick
                )
                if in_lease and not force:
                    # Leader stickiness: we heard from a live leader recently; a node that
                    # was partitioned away must not depose it.
                    return
            if m.type is MessageType.PRE_VOTE or (
                m.type is MessageType.PRE_VOTE_RESP and not m.reject
            ):
                pass  # pre-vote traffic never changes anyone's term
            elif m.type in _FROM_LEADER:
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NO_NODE)
        elif m.term < self.term:
            if m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.QUIESCE) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader: tell it our term so that it steps down (with pre-vote it
                # would otherwise never learn, since our pre-votes do not raise its term).
                self._send(m.src, MessageType.APPEND_RESP)
            elif m.type is MessageType.PRE_VOTE:
                self._send(m.src, MessageType.PRE_VOTE_RESP, reject=True)
            return

        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def propose(self, data: Sequence[bytes]) -> ProposalTicket:
        """Append application entries (one per item) on the leader.

        Returns where they landed. Raises NotLeaderError (with the known leader) on a
        non-leader and LeadershipTransferInProgressError during a transfer. Proposals made
        before the next ``ready()`` are sent to followers together (batching).
        """
        self._require_leader()
        if not data:
            raise ValueError("propose needs at least one entry")
        self._unquiesce()
        ticket = self._append([(EntryType.NORMAL, bytes(d)) for d in data])
        return ticket

    def propose_conf_change(self, change: ConfChange) -> ProposalTicket:
        """Append a single-server membership change; it takes effect once appended.

        Raises ConfChangeError if the change does not fit the membership, and
        ConfChangeInProgressError while another change is uncommitted or before this leader
        has committed an entry of its own term (the fix to single-server changes from the
        Raft mailing list, 2015).
        """
        self._require_leader()
        if self._pending_conf_index > self.log.committed:
            raise ConfChangeInProgressError(
                f"membership change at index {self._pending_conf_index} is not committed yet"
            )
        if not self._committed_in_term():
            raise ConfChangeInProgressError("the leader has not committed an entry of its term")
        new = apply_change(self.membership, change)
        self._unquiesce()
        data = encode_conf_change_record(ConfChangeRecord(change, new))
        ticket = self._append([(EntryType.CONF_CHANGE, data)])
        self._pending_conf_index = ticket.last_index
        return ticket

    def transfer_leadership(self, to: NodeId | None = None) -> NodeId:
        """Hand leadership to voter ``to`` (default: the most caught-up other voter).

        The leader stops accepting proposals, brings the target up to date and sends it
        TimeoutNow, which makes it campaign at once. If no new leader emerges within an
        election timeout, the transfer is abandoned. Returns the chosen target.
        """
        self._require_leader(allow_transfer=True)
        if to is None:
            others = [v for v in self.membership.voters if v != self.id and v in self._prs]
            if not others:
                raise TransferError("no other voter to transfer leadership to")
            to = max(others, key=lambda v: (self._prs[v].match, v))
        if to == self.id:
            return to
        if not self.membership.is_voter(to) or to not in self._prs:
            raise TransferError(f"cannot transfer leadership to {to!r}: not a voter")
        if self._transferee == to:
            return to
        self._unquiesce()
        self._transferee = to
        self._election_elapsed = 0
        if self._prs[to].match == self.log.last_index:
            self._send(to, MessageType.TIMEOUT_NOW)
        else:
            self._send_append(to)
        return to

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read barrier tagged ``context`` (unique, non-empty).

        The answer comes later as a ReadState in a Ready, once a quorum confirmed this node
        still leads; if leadership is lost first, no answer comes (the soft state shows the
        loss, and the runtime must fail the read). Raises NotLeaderError on a non-leader.
        """
        self._require_leader(allow_transfer=True)
        if not context or context == TRANSFER_CONTEXT:
            raise ValueError("a read context must be non-empty and not the transfer marker")
        if context in self._reads or context in self._reads_waiting:
            raise ValueError(f"read context {context!r} is already pending")
        self._unquiesce()
        if not self._committed_in_term():
            # Until an entry of its term commits, the leader's commit index may lag the
            # cluster's; wait (thesis §6.4 step 1).
            self._reads_waiting.append(context)
            return
        self._start_read(context)

    def report_snapshot(self, to: NodeId, success: bool) -> None:
        """The runtime finished (or failed) streaming a snapshot to ``to``."""
        pr = self._prs.get(to)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not success:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's answer (or a heartbeat response) before probing.
        pr.probe_sent = True

    def report_unreachable(self, to: NodeId) -> None:
        """The transport failed to deliver to ``to``: stop streaming optimistically."""
        pr = self._prs.get(to)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    # -- snapshots ------------------------------------------------------------------------

    def should_snapshot(self) -> bool:
        """True once ``snapshot_threshold`` entries, or ``snapshot_bytes`` bytes of entries,
        were applied since the last snapshot (whichever comes first: memory held by the log
        is bounded in bytes whatever the size of an entry).

        The runtime checks this after ``advance``; it then snapshots the state machine at the
        applied index, stores it under ``snapshot_meta()``, and calls ``compact(meta)``.
        """
        t = self.config.snapshot_threshold
        base = self.log.snapshot.index if self.log.snapshot else 0
        if self.log.applied <= base:
            return False
        if t > 0 and self.log.applied - base >= t:
            return True
        b = self.config.snapshot_bytes
        return b > 0 and self.log.bytes_between(base + 1, self.log.applied) >= b

    def snapshot_meta(self, index: int | None = None) -> SnapshotMeta:
        """Metadata for a snapshot of the state machine at ``index`` (default: applied)."""
        idx = self.log.applied if index is None else index
        if idx > self.log.applied:
            raise SnapshotError(f"index {idx} is not applied yet (applied {self.log.applied})")
        base = self.log.snapshot.index if self.log.snapshot else 0
        if idx < base:
            raise SnapshotError(f"index {idx} is older than the current snapshot at {base}")
        term = self.log.term(idx)
        if term is None:
            raise SnapshotError(f"index {idx} is compacted")
        return SnapshotMeta(idx, term, self._membership_at(idx))

    def compact(self, meta: SnapshotMeta) -> int:
        """A snapshot described by ``meta`` is durably stored: make it the newest snapshot
        and drop log entries below it (keeping at most ``snapshot_trailing_entries`` entries
        and at most ``snapshot_trailing_bytes`` bytes of them).

        Returns the highest index the runtime may now delete from its log store.
        """
        current = self.log.snapshot
        if current is not None and meta.index <= current.index:
            return self.log.offset
        if meta.index > self.log.applied:
            raise SnapshotError(f"snapshot at {meta.index} is beyond applied {self.log.applied}")
        if not self.log.match_term(meta.index, meta.term):
            raise SnapshotError(f"snapshot ({meta.index}, {meta.term}) does not match the log")
        self.log.snapshot = meta
        self._base_conf = (meta.index, meta.membership)
        self._confs = [c for c in self._confs if c[0] > meta.index]
        target = meta.index - self.config.snapshot_trailing_entries
        if self.config.snapshot_trailing_bytes > 0:
            by_bytes = self.log.index_keeping(meta.index, self.config.snapshot_trailing_bytes)
            target = max(target, min(by_bytes, meta.index))
        if target > self.log.offset:
            self.log.compact(target)
        return self.log.offset

    # ===================================================================================
    # Ready / advance
    # ===================================================================================

    def has_ready(self) -> bool:
        """True if ``ready()`` would return work (False while a Ready is outstanding)."""
        if self._outstanding is not None:
            return False
        lg = self.log
        return bool(
            self._msgs
            or self._read_states
            or (self._needs_bcast and self.role is Role.LEADER)
            or lg.pending_snapshot is not None
            or lg.in_progress < lg.last_index
            or self._hard_state() != self._prev_hs
            or self._soft_state() != self._prev_ss
            or lg.next_committed(1)
        )

    def ready(self) -> Ready:
        """Take the pending work. Call ``advance`` with it once done; until then no other
        Ready is given (inputs keep being accepted and go into the next one)."""
        if self._outstanding is not None:
            raise ReadyOutstandingError("advance() the previous Ready before asking for another")
        if self._needs_bcast:
            self._needs_bcast = False
            if self.role is Role.LEADER:
                self._bcast_append()
        lg = self.log
        hs = self._hard_state()
        prev = self._prev_hs
        entries = tuple(lg.unstable_entries())
        lg.in_progress = lg.last_index
        snap = lg.pending_snapshot
        lg.pending_snapshot = None
        committed = tuple(lg.next_committed(self.config.max_committed_per_ready))
        if committed:
            lg.applying = committed[-1].index
        msgs = tuple(self._msgs)
        self._msgs = []
        reads = tuple(self._read_states)
        self._read_states = []
        ss = self._soft_state()
        self._prev_ss = ss
        self._prev_hs = hs
        must_sync = (
            bool(entries) or snap is not None or (hs.term, hs.vote) != (prev.term, prev.vote)
        )
        # What may go before the fsync: leader traffic of the term that was durable before
        # this Ready (prev is what the runtime persisted last), never beside a snapshot.
        durable_term = prev.term
        early: tuple[Message, ...] = ()
        late = msgs
        if snap is None:
            early = tuple(m for m in msgs if m.type in EARLY_TYPES and m.term == durable_term)
            if early:
                late = tuple(
                    m for m in msgs if not (m.type in EARLY_TYPES and m.term == durable_term)
                )
        rd = Ready(
            hard_state=hs if hs != prev else None,
            entries=entries,
            snapshot=snap,
            messages_before_persist=early,
            messages_after_persist=late,
            committed_entries=committed,
            read_states=reads,
            must_sync=must_sync,
            soft_state=ss,
        )
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime persisted, sent and applied everything in ``rd``."""
        if rd is not self._outstanding:
            raise ReadyOutstandingError("advance() must get the Ready last returned by ready()")
        self._outstanding = None
        lg = self.log
        if rd.snapshot is not None:
            lg.applied = max(lg.applied, rd.snapshot.index)
            lg.applying = max(lg.applying, lg.applied)
        if rd.entries:
            last = rd.entries[-1]
            lg.stable_to(last.index, last.term)
        if rd.committed_entries:
            lg.applied = max(lg.applied, rd.committed_entries[-1].index)
        if self.role is Role.LEADER:
            # The leader counts its own log for commit only once it is durable.
            me = self._prs.get(self.id)
            if me is not None:
                me.maybe_update(lg.stable)
            if self._maybe_commit():
                self._commit_moved()

    # ===================================================================================
    # Queries
    # ===================================================================================

    @property
    def leader_id(self) -> NodeId:
        return self.lead

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index

    def entry_term(self, index: int) -> int | None:
        """Term of the entry at ``index`` in this node's log (None if compacted/absent)."""
        return self.log.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo..hi-1`` still in memory (lo must be above the compacted prefix)."""
        got = self.log.slice(lo, hi)
        if got is None:
            raise SnapshotError(
                f"entries from {lo} are compacted (first is {self.log.first_index})"
            )
        return got

    def caught_up_learners(self, max_lag: int = 0) -> list[NodeId]:
        """On the leader: learners whose log is within ``max_lag`` entries of the leader's
        last index, ready to be promoted with PROMOTE_LEARNER. Empty on other nodes."""
        if self.role is not Role.LEADER:
            return []
        last = self.log.last_index
        return [
            i
            for i in self.membership.learners
            if i in self._prs and self._prs[i].match >= last - max_lag
        ]

    def soft_state(self) -> SoftState:
        return self._soft_state()

    def hard_state(self) -> HardState:
        return self._hard_state()

    def status(self) -> Status:
        prog = {
            i: PeerStatus(
                p.match, p.next, p.state.name, p.recent_active, self.membership.is_voter(i)
            )
            for i, p in self._prs.items()
        }
        snap = self.log.snapshot
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            role=self.role,
            leader=self.lead,
            commit=self.log.committed,
            applied=self.log.applied,
            first_index=self.log.first_index,
            last_index=self.log.last_index,
            snapshot_index=snap.index if snap else 0,
            membership=self.membership,
            progress=prog,
            transferee=self._transferee,
        )

    # ===================================================================================
    # Roles
    # ===================================================================================

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NO_NODE
        self.lead = NO_NODE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        e = self.config.election_tick
        self._randomized_timeout = e + self._rng.randrange(e)
        self._transferee = NO_NODE
        self._votes = {}
        self._prs = {}
        self._reads.reset()
        self._reads_waiting = []
        self._pending_conf_index = 0
        self._needs_bcast = False
        self._commit_unsent = False
        self.quiesced = False
        self._idle_ticks = 0

    def _become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def _become_pre_candidate(self) -> None:
        # Term and vote stay as they are: a pre-vote changes nobody's state.
        self.role = Role.PRE_CANDIDATE
        self._votes = {}
        self._prs = {}
        self.lead = NO_NODE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        for s in self.membership:
            self._prs[s.id] = self._new_progress()
        me = self._prs.get(self.id)
        if me is not None:
            me.match = self.log.stable
            me.become_replicate()
            me.recent_active = True
        # Conservatively assume the log may hold an uncommitted membership change.
        self._pending_conf_index = self.log.last_index
        ticket = self._append([(EntryType.NOOP, b"")])
        self._term_start = ticket.first_index

    def _new_progress(self) -> Progress:
        return Progress(
            match=0,
            next=self.log.last_index + 1,
            inflights=Inflights(self.config.max_inflight_msgs),
        )

    def _promotable(self) -> bool:
        return self.membership.is_voter(self.id) and self.log.pending_snapshot is None

    def _hup(self, transfer: bool) -> None:
        if self.config.pre_vote and not transfer:
            self._campaign(MessageType.PRE_VOTE, transfer=False)
        else:
            self._campaign(MessageType.VOTE, transfer=transfer)

    def _campaign(self, kind: MessageType, transfer: bool) -> None:
        if kind is MessageType.PRE_VOTE:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self._votes[self.id] = True
        if self._tally() is quorum.VoteResult.WON:
            # A cluster of one: no one to ask.
            if kind is MessageType.PRE_VOTE:
                self._campaign(MessageType.VOTE, transfer=False)
            else:
                self._become_leader()
            return
        ctx = TRANSFER_CONTEXT if transfer else b""
        for v in self.membership.voters:
            if v != self.id:
                self._msgs.append(
                    Message(
                        type=kind,
                        src=self.id,
                        dst=v,
                        term=term,
                        index=self.log.last_index,
                        log_term=self.log.last_term,
                        context=ctx,
                    )
                )

    def _tally(self) -> quorum.VoteResult:
        return quorum.vote_result(self.membership.voters, self._votes)

    # ===================================================================================
    # Message handling
    # ===================================================================================

    def _handle_vote(self, m: Message) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote == NO_NODE and self.lead == NO_NODE)
            or (m.type is MessageType.PRE_VOTE and m.term > self.term)
        )
        resp = _VOTE_RESP[m.type]
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers in the term asked about, so the pre-candidate can
            # tell it apart from stale answers.
            self._msgs.append(Message(type=resp, src=self.id, dst=m.src, term=m.term))
            if m.type is MessageType.VOTE:
                self._election_elapsed = 0
                self.vote = m.src
        else:
            self._send(m.src, resp, reject=True)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MessageType.APPEND:
            self._election_elapsed = 0
            self.lead = m.src
            self._handle_append(m)
        elif t is MessageType.HEARTBEAT:
            self._election_elapsed = 0
            self.lead = m.src
            self.log.commit_to(min(m.commit, self.log.last_index))
            self._send(m.src, MessageType.HEARTBEAT_RESP, context=m.context)
        elif t is MessageType.QUIESCE:
            self._election_elapsed = 0
            self.lead = m.src
            self.log.commit_to(min(m.commit, self.log.last_index))
            if self.log.committed == m.commit:
                self.quiesced = True  # no answer: an answer would wake the leader
            else:  # missing entries: answer, which wakes the leader, which sends them
                self._send(m.src, MessageType.HEARTBEAT_RESP)
        elif t is MessageType.SNAPSHOT:
            self._election_elapsed = 0
            self.lead = m.src
            self._handle_snapshot(m)
        elif t is MessageType.TIMEOUT_NOW and self._promotable():
            self._hup(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in _FROM_LEADER:
            # Someone won this term.
            self._become_follower(self.term, m.src)
            self._step_follower(m)
            return
        want = (
            MessageType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if t is not want:
            return
        if self.membership.is_voter(m.src):
            self._votes.setdefault(m.src, not m.reject)
        result = self._tally()
        if result is quorum.VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(MessageType.VOTE, transfer=False)
            else:
                self._become_leader()
                self._bcast_append()
        elif result is quorum.VoteResult.LOST:
            self._become_follower(self.term, NO_NODE)

    def _handle_append(self, m: Message) -> None:
        lg = self.log
        if m.index < lg.committed:
            self._send(m.src, MessageType.APPEND_RESP, index=lg.committed)
            return
        last_new = lg.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(m.src, MessageType.APPEND_RESP, index=last_new)
            return
        # Fast backtracking: point the leader at our last entry that can possibly match.
        hint_index, hint_term = lg.find_conflict_by_term(min(m.index, lg.last_index), m.log_term)
        self._send(
            m.src,
            MessageType.APPEND_RESP,
            index=m.index,
            reject=True,
            hint_index=hint_index,
            hint_term=hint_term,
        )

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        lg = self.log
        if meta is None:
            return
        if meta.index <= lg.committed:
            self._send(m.src, MessageType.APPEND_RESP, index=lg.committed)
            return
        if lg.match_term(meta.index, meta.term):
            # Our log already holds the snapshot's last entry: just commit up to it.
            lg.commit_to(meta.index)
            self._send(m.src, MessageType.APPEND_RESP, index=lg.committed)
            return
        lg.restore(meta)
        self._base_conf = (meta.index, meta.membership)
        self._confs = []
        self.membership = meta.membership
        self._send(m.src, MessageType.APPEND_RESP, index=lg.last_index)

    def _step_leader(self, m: Message) -> None:
        pr = self._prs.get(m.src)
        if pr is None:
            return
        if m.type is MessageType.APPEND_RESP:
            pr.recent_active = True
            if m.reject:
                probe = m.hint_index
                if m.hint_term > 0:
                    probe, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
                if pr.maybe_decr_to(m.index, probe):
                    if pr.state is ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.src)
                return
            was_paused = pr.paused
            if not pr.maybe_update(m.index):
                return
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT:
                if pr.match >= pr.pending_snapshot:
                    pr.become_replicate()
            else:
                pr.inflights.free_le(m.index)
            if self._maybe_commit():
                if self.role is not Role.LEADER:
                    return  # the commit removed this leader
                self._commit_moved()
                if was_paused:
                    self._send_append(m.src)
            elif was_paused:
                self._send_append(m.src)
            while self._send_append(m.src, send_empty=False):
                pass
            if m.src == self._transferee and pr.match == self.log.last_index:
                self._send(m.src, MessageType.TIMEOUT_NOW)
        elif m.type is MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full:
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index:
                self._send_append(m.src)
            if m.context:
                acks = self._reads.recv_ack(m.src, m.context)
                if acks is not None and quorum.has_quorum(self.membership.voters, acks):
                    for req in self._reads.release_through(m.context):
                        self._read_states.append(ReadState(req.index, req.context))

    # ===================================================================================
    # Leader machinery
    # ===================================================================================

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_tick:
            self._election_elapsed = 0
            if self.config.check_quorum:
                active = {i for i, p in self._prs.items() if p.recent_active or i == self.id}
                if not quorum.has_quorum(self.membership.voters, active):
                    self._become_follower(self.term, NO_NODE)
                    return
                for i, p in self._prs.items():
                    p.recent_active = i == self.id
            self._transferee = NO_NODE  # a transfer that took an election timeout failed
        if self.config.quiesce_after_ticks:
            self._idle_ticks = self._idle_ticks + 1 if self._idle() else 0
            if self._idle_ticks >= self.config.quiesce_after_ticks:
                self._quiesce()  # QUIESCE is this tick's heartbeat: no other, no answer
                return
        if self._heartbeat_elapsed >= self.config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads.last_context())

    def _idle(self) -> bool:
        """Nothing under way: every replica holds every entry, all committed in this term;
        no read, transfer, unsent commit or snapshot; every follower streamed (REPLICATE)."""
        lg = self.log
        if (
            self._transferee
            or len(self._reads)
            or self._reads_waiting
            or self._commit_unsent
            or self._needs_bcast
            or lg.committed != lg.last_index
            or not self._committed_in_term()
        ):
            return False
        for i, p in self._prs.items():
            if p.match != lg.last_index:
                return False
            if i != self.id and p.state is not ProgressState.REPLICATE:
                return False
        return True

    def _quiet_message(self, m: Message) -> bool:
        """Messages that leave a quiesced node quiet: QUIESCE itself, and on a leader a late
        answer to a heartbeat of its term without a read (it asks nothing of the leader)."""
        if m.type is MessageType.QUIESCE:
            return True
        return (
            self.role is Role.LEADER
            and m.type is MessageType.HEARTBEAT_RESP
            and m.term == self.term
            and not m.context
        )

    def _quiesce(self) -> None:
        """Tell every follower the group is idle (QUIESCE carries the commit index) and go
        quiet. A follower that misses the message times out and campaigns: its (pre-)vote
        wakes this leader, whose heartbeat then quiets it again."""
        self.quiesced = True
        self._idle_ticks = 0
        for i, p in self._prs.items():
            if i != self.id:
                self._send(i, MessageType.QUIESCE, commit=min(p.match, self.log.committed))

    def _unquiesce(self) -> None:
        if not self.quiesced:
            return
        self.quiesced = False
        self._idle_ticks = 0
        if self.role is Role.LEADER:
            # a fresh check-quorum period, and a heartbeat now so that the followers wake
            self._election_elapsed = 0
            self._heartbeat_elapsed = 0
            for i, p in self._prs.items():
                p.recent_active = i == self.id
            self._bcast_heartbeat(self._reads.last_context())

    def wake_quiesced(self, down: NodeId) -> None:
        """The runtime's failure detection says node ``down`` is unreachable. A follower
        quiesced under that leader wakes with the leader's lease over (it grants votes at
        once), and so elects a new leader within an election timeout, as it would have if
        the heartbeats had stopped. Does nothing otherwise."""
        if self.quiesced and self.role is not Role.LEADER and self.lead == down:
            self._unquiesce()
            self._election_elapsed = self.config.election_tick

    def _require_leader(self, allow_transfer: bool = False) -> None:
        if self.role is not Role.LEADER:
            addr = self.membership.address_of(self.lead) or "" if self.lead else ""
            raise NotLeaderError(self.lead, addr)
        if self._transferee and not allow_transfer:
            raise LeadershipTransferInProgressError(
                f"leadership is being transferred to {self._transferee!r}"
            )

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _append(self, items: Sequence[tuple[EntryType, bytes]]) -> ProposalTicket:
        first = self.log.last_index + 1
        ents = [Entry(self.term, first + n, kind, data) for n, (kind, data) in enumerate(items)]
        self.log.append(ents)
        self._needs_bcast = True
        return ProposalTicket(self.term, first, self.log.last_index)

    def _maybe_commit(self) -> bool:
        match = {i: p.match for i, p in self._prs.items()}
        mci = quorum.committed_index(self.membership.voters, match)
        # Only entries of the current term are committed by counting (§5.4.2).
        if mci <= self.log.committed or self.log.term(mci) != self.term:
            return False
        self.log.commit_to(mci)
        if self._reads_waiting and self._committed_in_term():
            waiting, self._reads_waiting = self._reads_waiting, []
            for ctx in waiting:
                self._start_read(ctx)
        self._prune_removed()
        self._maybe_step_down_removed()
        return True

    def _maybe_step_down_removed(self) -> None:
        """A leader that committed its own removal hands over and steps down."""
        if self.membership.is_voter(self.id):
            return
        conf_index = self._confs[-1][0] if self._confs else self._base_conf[0]
        if conf_index > self.log.committed:
            return
        others = [v for v in self.membership.voters if v in self._prs]
        # Tell followers about the commit before leaving, then nudge the best successor.
        self._bcast_append()
        if others:
            best = max(others, key=lambda v: (self._prs[v].match, v))
            if self._prs[best].match == self.log.last_index:
                self._send(best, MessageType.TIMEOUT_NOW)
        self._become_follower(self.term, NO_NODE)

    def _start_read(self, ctx: bytes) -> None:
        if len(self.membership.voters) <= 1 and self.membership.is_voter(self.id):
            self._read_states.append(ReadState(self.log.committed, ctx))
            return
        self._reads.add(self.log.committed, ctx, self.id)
        self._bcast_heartbeat(ctx)

    def _commit_moved(self) -> None:
        """The commit index moved: tell the followers now, or mark it for later
        (``defer_commit_broadcast``)."""
        if self.config.defer_commit_broadcast:
            self._commit_unsent = True
        else:
            self._bcast_append()

    @property
    def commit_unsent(self) -> bool:
        """A leader whose followers have not been sent its newest commit index yet (only
        with ``defer_commit_broadcast``): the runtime calls :meth:`broadcast_commit`."""
        return self._commit_unsent

    def broadcast_commit(self) -> None:
        """Send the commit index to every follower now if it is still unsent (an append
        to each one that can take it; see ``RaftConfig.defer_commit_broadcast``)."""
        if self._commit_unsent and self.role is Role.LEADER:
            self._bcast_append()
        self._commit_unsent = False

    def _bcast_append(self) -> None:
        self._commit_unsent = False  # every append carries the commit index
        for i, pr in self._prs.items():
            if i != self.id and self._send_append(i):
                # Pipelining: fill the window for followers known to be in sync.
                while pr.state is ProgressState.REPLICATE and self._send_append(
                    i, send_empty=False
                ):
                    pass

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        self._commit_unsent = False  # heartbeats carry it too (up to each one's match)
        for i, p in self._prs.items():
            if i != self.id:
                self._send(
                    i,
                    MessageType.HEARTBEAT,
                    commit=min(p.match, self.log.committed),
                    context=ctx,
                )

    def _send_append(self, to: NodeId, send_empty: bool = True) -> bool:
        """Send ``to`` the next AppendEntries (or a snapshot) if flow control allows."""
        pr = self._prs[to]
        if pr.paused:
            return False
        lg = self.log
        prev = pr.next - 1
        prev_term = lg.term(prev)
        ents = lg.slice(pr.next, lg.last_index + 1, self.config.max_size_per_msg)
        if prev_term is None or ents is None:
            if not pr.recent_active or lg.snapshot is None:
                return False
            pr.become_snapshot(lg.snapshot.index)
            self._msgs.append(
                Message(
                    type=MessageType.SNAPSHOT,
                    src=self.id,
                    dst=to,
                    term=self.term,
                    snapshot=lg.snapshot,
                )
            )
            return True
        if not ents and not send_empty:
            return False
        self._msgs.append(
            Message(
                type=MessageType.APPEND,
                src=self.id,
                dst=to,
                term=self.term,
                index=prev,
                log_term=prev_term,
                entries=tuple(ents),
                commit=lg.committed,
            )
        )
        if pr.state is ProgressState.REPLICATE and ents:
            pr.next = ents[-1].index + 1
            pr.inflights.add(ents[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send(
        self,
        to: NodeId,
        kind: MessageType,
        *,
        index: int = 0,
        reject: bool = False,
        hint_index: int = 0,
        hint_term: int = 0,
        commit: int = 0,
        context: bytes = b"",
    ) -> None:
        self._msgs.append(
            Message(
                type=kind,
                src=self.id,
                dst=to,
                term=self.term,
                index=index,
                reject=reject,
                hint_index=hint_index,
                hint_term=hint_term,
                commit=commit,
                context=context,
            )
        )

    # ===================================================================================
    # Membership bookkeeping
    # ===================================================================================

    def _scan_confs(self, after: int) -> None:
        """Drop membership records above ``after`` and re-read CONF entries after it."""
        self._confs = [c for c in self._confs if c[0] <= after]
        lo = max(after + 1, self.log.first_index)
        for e in self.log.slice(lo, self.log.last_index + 1) or []:
            if e.type is EntryType.CONF_CHANGE:
                self._confs.append((e.index, decode_conf_change_record(e.data).membership))
        self.membership = self._confs[-1][1] if self._confs else self._base_conf[1]

    def _membership_at(self, index: int) -> Membership:
        best = self._base_conf
        for c in self._confs:
            if best[0] < c[0] <= index:
                best = c
        return best[1]

    def _on_log_append(self, after: int, _entries: Sequence[Entry]) -> None:
        old = self.membership
        self._scan_confs(after)
        if self.membership != old and self.role is Role.LEADER:
            # Removed servers keep receiving the log until their removal commits, so that
            # they learn of it and stop campaigning (see _prune_removed).
            for s in self.membership:
                if s.id not in self._prs:
                    self._prs[s.id] = self._new_progress()
            if self._transferee and not self.membership.is_voter(self._transferee):
                self._transferee = NO_NODE

    def _prune_removed(self) -> None:
        conf_index = self._confs[-1][0] if self._confs else self._base_conf[0]
        if conf_index > self.log.committed:
            return
        for i in list(self._prs):
            if i not in self.membership and i != self.id:
                del self._prs[i]

    # ===================================================================================
    # State snapshots
    # ===================================================================================

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role, self.term)


# Re-exported: the core's public surface includes what it returns and the bootstrap helpers.
__all__ = [
    "EARLY_TYPES",
    "TRANSFER_CONTEXT",
    "PeerStatus",
    "RaftCore",
    "Ready",
    "Status",
    "bootstrap_state",
    "check_can_bootstrap",
]
