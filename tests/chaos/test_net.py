"""The network nemeses' mechanisms on two namespaces: random packet loss is about the rate
asked for and goes away on heal; delay runs where sch_netem exists and says why not where
it does not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.chaos_net import NetnsNetwork, NetworkError

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(60)]

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
print("ready", flush=True)
s.settimeout(0.5)
got = 0
try:
    while True:
        s.recv(64)
        got += 1
except TimeoutError:
    pass
print(got, flush=True)
"""
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x", (sys.argv[1], 9999))
    time.sleep(0.0002)
"""


def delivered(net: NetnsNetwork, src: str, dst: str, packets: int) -> int:
    """UDP datagrams sent from ``src``'s namespace that reached ``dst``."""
    receiver = subprocess.Popen(
        [*net.exec_prefix(dst), sys.executable, "-c", RECEIVER, net.ip[dst]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(
            [*net.exec_prefix(src), sys.executable, "-c", SENDER, net.ip[dst], str(packets)],
            check=True,
            timeout=30,
        )
        out, _ = receiver.communicate(timeout=30)
        return int(out.strip())
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


@pytest.fixture
def net(netns_unavailable: str | None) -> NetnsNetwork:
    if netns_unavailable is not None:
        pytest.skip(netns_unavailable)
    n = NetnsNetwork(["a", "b"])
    n.setup()
    yield n  # type: ignore[misc]
    n.close()


def test_random_loss_is_about_the_rate_and_heals(net: NetnsNetwork) -> None:
    if net.loss_unavailable is not None:
        pytest.skip(net.loss_unavailable)
    packets = 2000
    assert delivered(net, "a", "b", packets) == packets
    how = net.lossy("a", 30)
    assert "30%" in how
    got = delivered(net, "a", "b", packets)
    # binomial(2000, 0.7): mean 1400, sd 20; a wide band still catches "no loss" and "all"
    assert 1250 < got < 1550, (how, got)
    assert delivered(net, "b", "a", packets) == packets  # egress of a only
    net.heal()
    assert delivered(net, "a", "b", packets) == packets


def test_delay_runs_or_says_why_not(net: NetnsNetwork) -> None:
    if net.loss_method == "netem":
        assert net.delay_unavailable is None
        assert "delay" in net.delayed("a", 20, 5)
        net.heal()
    else:
        assert net.delay_unavailable is not None and "netem" in net.delay_unavailable
        with pytest.raises(NetworkError, match="netem"):
            net.delayed("a", 20, 5)
