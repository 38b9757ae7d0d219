"""Fixtures of the client tests (helpers in ``support.client_nodes``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from raftlog.client import ClientConfig, LogClient
from raftlog.security import CertFiles
from support.client_nodes import FAST, RestartableNode, open_client


@pytest.fixture
async def make_node(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> AsyncIterator[Callable[[str], Awaitable[RestartableNode]]]:
    """``await make_node("a")`` starts a node; every node is stopped at the end."""
    nodes: list[RestartableNode] = []

    async def start(name: str) -> RestartableNode:
        node = RestartableNode(tmp_path / name, dev_certs, name)
        nodes.append(node)
        await node.start()
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
def client_of(
    dev_certs: dict[str, CertFiles],
) -> Callable[..., contextlib.AbstractAsyncContextManager[LogClient]]:
    """``async with client_of(addr[, role=..., config=...]) as client``."""

    def make(
        addrs: str | Sequence[str], role: str = "root", config: ClientConfig = FAST
    ) -> contextlib.AbstractAsyncContextManager[LogClient]:
        return open_client(addrs, dev_certs, role, config)

    return make
