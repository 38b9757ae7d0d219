"""A test network of Linux network namespaces for the chaos harness.

Each node gets its own namespace with one veth interface (``eth0``) plugged into a bridge
in the test's namespace, which holds the gateway address (``.1``): the test process (the
clients) reaches every node directly, and nodes reach each other through the bridge.

Faults, with what this kernel offers (``sch_netem``, the tc actions ``gact``/``police``/
``pedit``, the ``matchall``/``basic``/``flower`` classifiers and iptables/nftables are not
available here; ``htb``/``tbf``/``pfifo`` qdiscs, the ``u32`` and ``bpf`` classifiers,
``mirred`` and blackhole routes are):

- **partition**: for every cut pair (a, b), a blackhole route to b in a's namespace and to
  a in b's namespace; packets are dropped at the sender, in both directions.
- **slow link**: a token bucket (``tbf``) on the node's egress: a low rate makes packets
  queue (delay up to the bucket's ``latency``) and drops what does not fit (loss under
  load).
- **link flap**: the node's interface down, then up (every packet lost meanwhile).
- **packet loss**: with ``sch_netem`` (a stock Debian kernel has it as a module),
  ``netem loss P%``; without it, an ``htb`` root whose ``bpf`` filter (classic BPF given as
  bytecode, no compiler needed) reads the kernel's per-packet random number
  (``ld rand``) and sends P % of the packets to a class whose leaf is ``pfifo limit 0``,
  which drops every packet it is given. Uniform random loss on the node's egress.
- **delay**: only with ``sch_netem`` (``netem delay D ms J ms``). Without it no kernel
  mechanism here holds a packet for a fixed time (``tbf``/``htb`` delay only what exceeds
  a rate: that is the slow link); :attr:`NetnsNetwork.delay_unavailable` says why.

Every namespace, bridge and route belongs to one :class:`NetnsNetwork`, named after the
test's process id, and :meth:`NetnsNetwork.close` removes them; :func:`clean_stale` removes
those of dead test processes (a run killed before its finalizers).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable

from support.procs import pid_gone

PREFIX = "rlc"
_NS = re.compile(rf"^{PREFIX}(\d+)-\S+")
_BR = re.compile(rf"^\d+:\s+{PREFIX}b(\d+)[:@]")


class NetworkError(RuntimeError):
    """A namespace, link, route or qdisc command failed."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def clean_stale() -> list[str]:
    """Delete namespaces and bridges of test processes that no longer exist; their names."""
    removed: list[str] = []
    if shutil.which("ip") is None:
        return removed
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        match = _NS.match(line)
        if match and int(match.group(1)) != os.getpid() and pid_gone(int(match.group(1))):
            name = line.split()[0]
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        match = _BR.match(line)
        if match and int(match.group(1)) != os.getpid() and pid_gone(int(match.group(1))):
            name = line.split(":")[1].strip().split("@")[0]
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def probe() -> str | None:
    """None if namespaces can be made here, else the reason they cannot (for skip messages)."""
    if os.geteuid() != 0:
        return "network nemeses need root (ip netns); running process nemeses only"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "network nemeses need iproute2 (ip, tc); running process nemeses only"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run("ip", "netns", "add", name)
    except (NetworkError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace ({exc}); running process nemeses only"
    _run("ip", "netns", "del", name, check=False)
    return None


def _free_subnet(pid: int) -> str:
    """A ``10.213.K`` subnet no interface of this host uses: tests run in parallel
    (pytest-xdist workers), each with its own bridge; K starts at the process id mod 250."""
    listed = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    used = {int(m) for m in re.findall(r"\binet 10\.213\.(\d+)\.", listed)}
    for step in range(250):
        k = (pid + step) % 250 + 1
        if k not in used:
            return f"10.213.{k}"
    raise NetworkError("every 10.213.K subnet (K = 1..250) is in use")


class NetnsNetwork:
    """Namespaces for ``names`` on one bridge; addresses ``10.213.K.11``, ``.12``, ..."""

    def __init__(self, names: Iterable[str]) -> None:
        pid = os.getpid()
        self.names = list(names)
        self.subnet = _free_subnet(pid)
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{PREFIX}b{pid}"
        self.ns = {n: f"{PREFIX}{pid}-{n}" for n in self.names}
        self.ip = {n: f"{self.subnet}.{11 + i}" for i, n in enumerate(self.names)}
        self._veth = {n: f"{PREFIX}v{pid}{i}" for i, n in enumerate(self.names)}
        self._blocked: set[tuple[str, str]] = set()
        self._slow: set[str] = set()
        self._down: set[str] = set()
        #: how packet loss is made here: "netem", "htb+bpf" or None (see :meth:`setup`)
        self.loss_method: str | None = None
        #: why the loss / delay nemeses cannot run here (None: they can)
        self.loss_unavailable: str | None = "not probed yet (setup() probes)"
        self.delay_unavailable: str | None = "not probed yet (setup() probes)"

    def setup(self) -> None:
        """Create the bridge, the namespaces and their links (undone by :meth:`close`)."""
        self.close()  # whatever an earlier network of this process left under our names
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for name in self.names:
                ns, veth = self.ns[name], self._veth[name]
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            self._probe_loss()
        except BaseException:
            self.close()
            raise

    def _tc(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns[name], "tc", *args, check=check)

    def _probe_loss(self) -> None:
        """Find out, on the first node's interface, whether netem or the htb+bpf fallback
        works (each tried and removed again)."""
        first = self.names[0]
        done = self._tc(first, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
                        check=False)  # fmt: skip
        self._tc(first, "qdisc", "del", "dev", "eth0", "root", check=False)
        if done.returncode == 0:
            self.loss_method = "netem"
            self.loss_unavailable = self.delay_unavailable = None
            return
        netem_error = done.stderr.strip() or f"exit {done.returncode}"
        self.delay_unavailable = (
            f"no sch_netem in this kernel (tc: {netem_error}); nothing else here holds a "
            "packet for a fixed time (tbf/htb delay only traffic above a rate: the slow "
            "nemesis)"
        )
        try:
            self._lossy_htb(first, 1)
        except NetworkError as exc:
            self.loss_unavailable = (
                f"no sch_netem (tc: {netem_error}) and the htb + cls_bpf + pfifo-limit-0 "
                f"fallback failed too ({exc})"
            )
        else:
            self.loss_method = "htb+bpf"
            self.loss_unavailable = None
        finally:
            self._tc(first, "qdisc", "del", "dev", "eth0", "root", check=False)

    def _lossy_htb(self, name: str, loss_pct: float) -> None:
        """``loss_pct`` % random loss on ``name``'s egress without netem: an htb root,
        class 1:10 (default, unshaped) and class 1:20 whose leaf (``pfifo limit 0``) drops
        what it is given; a classic-BPF filter sends a packet to 1:20 when the kernel's
        per-packet random u32 (``ld rand``) is at or above the pass threshold."""
        threshold = min(2**32 - 1, int((1 - loss_pct / 100) * 2**32))
        drop_class = 0x10020  # 1:20
        program = [
            (0x20, 0, 0, 0xFFFFF038),  # ld rand  (SKF_AD_OFF + SKF_AD_RANDOM)
            (0x35, 0, 1, threshold),  # jge #threshold -> next, else skip one
            (0x06, 0, 0, drop_class),  # ret 1:20
            (0x06, 0, 0, 0),  # ret 0: no match, htb's default class
        ]
        bytecode = ",".join([str(len(program)), *(f"{c} {t} {f} {k}" for c, t, f, k in program)])
        tc = self._tc
        tc(name, "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default",
           "10", "r2q", "100000")  # fmt: skip
        tc(name, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
           "rate", "10gbit")  # fmt: skip
        tc(name, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:20", "htb",
           "rate", "10gbit")  # fmt: skip
        tc(name, "qdisc", "add", "dev", "eth0", "parent", "1:20", "handle", "20:", "pfifo",
           "limit", "0")  # fmt: skip
        tc(name, "filter", "add", "dev", "eth0", "parent", "1:", "prio", "1", "bpf",
           "bytecode", bytecode)  # fmt: skip

    def exec_prefix(self, name: str) -> tuple[str, ...]:
        """The command prefix that runs a program in ``name``'s namespace."""
        return ("ip", "netns", "exec", self.ns[name])

    def _route(self, verb: str, src: str, dst: str, check: bool = True) -> None:
        ns, ip = self.ns[src], self.ip[dst]
        _run("ip", "-n", ns, "route", verb, "blackhole", f"{ip}/32", check=check)

    # -- faults ----------------------------------------------------------------------------

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop all packets between each pair, both ways (blackhole routes)."""
        for a, b in pairs:
            for src, dst in ((a, b), (b, a)):
                if (src, dst) not in self._blocked:
                    _run(
                        "ip", "-n", self.ns[src], "route", "add", "blackhole", f"{self.ip[dst]}/32"
                    )
                    self._blocked.add((src, dst))

    def slow(self, name: str, rate_kbit: int, latency_ms: int) -> None:
        """Shape ``name``'s egress: ``rate_kbit`` kbit/s, queue up to ``latency_ms``, drop
        the rest."""
        _run(
            "ip", "netns", "exec", self.ns[name], "tc", "qdisc", "replace", "dev", "eth0",
            "root", "tbf", "rate", f"{rate_kbit}kbit", "burst", "4kb",
            "latency", f"{latency_ms}ms",
        )  # fmt: skip
        self._slow.add(name)

    def lossy(self, name: str, loss_pct: float) -> str:
        """Lose ``loss_pct`` % of ``name``'s outgoing packets at random; how (for the
        timeline). Raises :class:`NetworkError` when :attr:`loss_unavailable`."""
        if self.loss_unavailable is not None:
            raise NetworkError(self.loss_unavailable)
        self._slow.add(name)  # healed like the slow link: the root qdisc goes
        if self.loss_method == "netem":
            self._tc(name, "qdisc", "replace", "dev", "eth0", "root", "netem", "loss",
                     f"{loss_pct}%")  # fmt: skip
            return f"netem loss {loss_pct}%"
        self._tc(name, "qdisc", "del", "dev", "eth0", "root", check=False)
        self._lossy_htb(name, loss_pct)
        return f"htb+bpf random drop {loss_pct}%"

    def delayed(self, name: str, delay_ms: int, jitter_ms: int) -> str:
        """Delay ``name``'s outgoing packets by ``delay_ms`` ± ``jitter_ms`` (netem only)."""
        if self.delay_unavailable is not None:
            raise NetworkError(self.delay_unavailable)
        self._slow.add(name)
        self._tc(name, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                 f"{delay_ms}ms", f"{jitter_ms}ms")  # fmt: skip
        return f"netem delay {delay_ms}ms ±{jitter_ms}ms"

    def link_down(self, name: str) -> None:
        """Take ``name``'s interface down (all its packets lost until :meth:`heal`)."""
        _run("ip", "-n", self.ns[name], "link", "set", "eth0", "down")
        self._down.add(name)

    def heal(self) -> None:
        """Undo every cut, shaping and link-down."""
        for src, dst in sorted(self._blocked):
            _run(
                "ip",
                "-n",
                self.ns[src],
                "route",
                "del",
                "blackhole",
                f"{self.ip[dst]}/32",
                check=False,
            )
        self._blocked.clear()
        for name in sorted(self._slow):
            _run(
                "ip",
                "netns",
                "exec",
                self.ns[name],
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
                check=False,
            )
        self._slow.clear()
        for name in sorted(self._down):
            _run("ip", "-n", self.ns[name], "link", "set", "eth0", "up", check=False)
        self._down.clear()

    @property
    def faulty(self) -> bool:
        return bool(self._blocked or self._slow or self._down)

    def close(self) -> None:
        """Remove every link, namespace and the bridge (idempotent, never raises).

        The root side of each veth pair is deleted first, which removes its peer at once:
        deleting a namespace alone frees its veth pairs later, in the kernel's own time, and
        the next network of this process (same names) could then find them still there.
        """
        for name in self.names:
            _run("ip", "link", "del", self._veth[name], check=False)
            _run("ip", "netns", "del", self.ns[name], check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        self._blocked.clear()
        self._slow.clear()
        self._down.clear()
