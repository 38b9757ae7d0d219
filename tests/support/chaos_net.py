"""A test network of Linux network namespaces for the chaos harness.

Each node gets its own namespace with one veth interface (``eth0``) plugged into a bridge
in the test's namespace, which holds the gateway address (``.1``): the test process (the
clients) reaches every node directly, and nodes reach each other through the bridge.

Faults, with what this kernel offers (``sch_netem``, tc actions and iptables are not
available here; ``htb``/``tbf`` qdiscs and blackhole routes are):

- **partition**: for every cut pair (a, b), a blackhole route to b in a's namespace and to
  a in b's namespace; packets are dropped at the sender, in both directions.
- **slow link**: a token bucket (``tbf``) on the node's egress: a low rate makes packets
  queue (delay up to the bucket's ``latency``) and drops what does not fit (loss under
  load).
- **link flap**: the node's interface down, then up (every packet lost meanwhile).

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete namespaces and bridges of test processes that no longer exist; their names."""
    removed: list[str] = []
    if shutil.which("ip") is None:
        return removed
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        match = _NS.match(line)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            name = line.split()[0]
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        match = _BR.match(line)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
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


class NetnsNetwork:
    """Namespaces for ``names`` on one bridge; addresses ``10.213.K.11``, ``.12``, ..."""

    def __init__(self, names: Iterable[str]) -> None:
        pid = os.getpid()
        self.names = list(names)
        self.subnet = f"10.213.{pid % 250 + 1}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{PREFIX}b{pid}"
        self.ns = {n: f"{PREFIX}{pid}-{n}" for n in self.names}
        self.ip = {n: f"{self.subnet}.{11 + i}" for i, n in enumerate(self.names)}
        self._veth = {n: f"{PREFIX}v{pid}{i}" for i, n in enumerate(self.names)}
        self._blocked: set[tuple[str, str]] = set()
        self._slow: set[str] = set()
        self._down: set[str] = set()

    def setup(self) -> None:
        """Create the bridge, the namespaces and their links (undone by :meth:`close`)."""
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
        except BaseException:
            self.close()
            raise

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
        """Remove every namespace and the bridge (idempotent, never raises)."""
        for name in self.names:
            _run("ip", "netns", "del", self.ns[name], check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        self._blocked.clear()
        self._slow.clear()
        self._down.clear()
