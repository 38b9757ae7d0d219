"""``raftlog topic ...`` and ``raftlog produce/consume --topic`` through the CLI, on a
3-node cluster of real agent processes: the commands a user types, in the order they would.

Create a topic, see it listed and described, write to it by key (arguments and stdin lines)
and by partition, read each partition back, be refused the things that are refused (an
existing name, an unknown topic, --partition with --key, deleting the default topic),
and delete it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raftlog.api.partitioning import partition_for_key
from raftlog.security import CertFiles
from support.cli import run_raftlog
from support.cluster import three_node_cluster_async
from support.wait import wait_until

pytestmark = pytest.mark.timeout(150)

PARTITIONS = 4


def _flags(cert: CertFiles, addrs: list[str]) -> list[str]:
    return ["--addr", ",".join(addrs), "--ca-file", str(cert.ca_file),
            "--cert-file", str(cert.cert_file), "--key-file", str(cert.key_file),
            "--timeout", "15"]  # fmt: skip


async def test_topic_commands_and_keyed_produce_consume(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    async with three_node_cluster_async(tmp_path, dev_certs) as c:
        addrs = [n.rpc_addr for n in c.nodes.values()]
        flags = _flags(dev_certs["root"], addrs)

        async def raftlog(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
            return await run_raftlog(*args, *flags, cwd=tmp_path, stdin=stdin)

        code, out, err = await raftlog(
            "topic", "create", "orders", "--partitions", str(PARTITIONS), "--replication", "2",
            "--retention-bytes", "1048576",
        )  # fmt: skip
        assert code == 0, err
        assert out.splitlines()[0] == (
            f"topic orders: {PARTITIONS} partitions, replication 2, retention bytes 1048576, "
            "retention ms -"
        )
        code, out, err = await raftlog("topic", "create", "orders", "--partitions", "2")
        assert code == 1 and out == ""
        assert err.startswith("raftlog topic create: ") and "orders" in err
        assert len(err.splitlines()) == 1
        code, _, err = await raftlog("topic", "create", "bad", "--partitions", "0")
        assert code == 2 and "--partitions must be >= 1" in err

        code, out, err = await raftlog("topic", "list")
        assert code == 0, err
        lines = [line.split() for line in out.splitlines()]
        assert lines[0] == ["TOPIC", "PARTITIONS", "REPLICATION", "RETENTION_BYTES",
                            "RETENTION_MS"]  # fmt: skip
        assert ["orders", str(PARTITIONS), "2", "1048576", "-"] in lines[1:]
        assert {line[0] for line in lines[1:]} == {"default", "orders"}
        code, out, err = await raftlog("topic", "list", "--format", "json")
        assert code == 0, err
        assert {t["name"]: t["settings"]["partitions"] for t in json.loads(out)} == {
            "default": 1,
            "orders": PARTITIONS,
        }

        described: dict[str, object] = {}

        async def all_led() -> bool:
            code, out, _ = await raftlog("topic", "describe", "orders", "--format", "json")
            if code != 0:
                return False
            described.update(json.loads(out))
            parts = described["partitions"]
            assert isinstance(parts, list)
            return len(parts) == PARTITIONS and all(
                p["leader_id"] and len(p["replicas"]) == 2 for p in parts
            )

        await wait_until(all_led, timeout=40, what="a leader for every partition of orders")
        code, out, err = await raftlog("topic", "describe", "orders")
        assert code == 0, err
        table = [line.split() for line in out.splitlines()[1:]]
        assert table[0] == ["PARTITION", "LEADER", "EPOCH", "REPLICA", "ADDRESS", "ROLE",
                            "STATE", "NEXT", "LAG", "LIVE"]  # fmt: skip
        rows = table[1:]
        assert len(rows) == PARTITIONS * 2  # one row per replica
        assert sorted({r[0] for r in rows}) == [str(p) for p in range(PARTITIONS)]
        assert {r[4] for r in rows} <= set(addrs)
        for p in range(PARTITIONS):  # the leader is one of the partition's replicas
            mine = [r for r in rows if r[0] == str(p)]
            assert mine[0][1] in {r[3] for r in mine}

        # keys whose partitions differ, so each partition read back holds only its key
        keys = ["alice", "bob", "carol", "dave", "erin"]
        part = {k: partition_for_key(k.encode(), PARTITIONS) for k in keys}
        alice = "alice"
        other = next(k for k in keys if part[k] != part[alice])

        code, out, err = await raftlog("produce", "--topic", "orders", "--key", alice, "a1", "a2")
        assert code == 0, err
        assert out.splitlines() == [f"{part[alice]} 0", f"{part[alice]} 1"]
        code, out, err = await raftlog(
            "produce", "--topic", "orders", "--key", other, stdin=b"o1\no2\no3\n"
        )
        assert code == 0, err
        assert out.splitlines() == [f"{part[other]} {i}" for i in range(3)]
        free = next(p for p in range(PARTITIONS) if p not in (part[alice], part[other]))
        code, out, err = await raftlog(
            "produce", "--topic", "orders", "--partition", str(free), "x"
        )
        assert code == 0, err
        assert out.splitlines() == [f"{free} 0"]
        code, out, err = await raftlog(
            "produce", "--topic", "orders", "--partition", "1", "--key", "k", "x"
        )
        assert code == 2 and "--partition or --key, not both" in err and out == ""

        code, out, err = await raftlog(
            "consume", "--topic", "orders", "--partition", str(part[alice]), "--from", "0"
        )
        assert code == 0, err
        assert out.splitlines() == ["a1", "a2"]
        code, out, err = await raftlog(
            "consume", "--topic", "orders", "--key", other, "--format", "json"
        )
        assert code == 0, err
        assert [json.loads(line) for line in out.splitlines()] == [
            {"partition": part[other], "offset": i, "value": f"o{i + 1}", "encoding": "utf-8"}
            for i in range(3)
        ]
        code, out, err = await raftlog(
            "consume", "--topic", "orders", "--partition", str(free), "--from", "0", "--count", "1"
        )
        assert code == 0 and out == "x\n", err
        # the default topic is untouched: its log is still empty
        code, out, err = await raftlog("consume", "--from", "0")
        assert code == 0 and out == "", err

        code, out, err = await raftlog("consume", "--topic", "nope", "--from", "0")
        assert code == 1 and out == "" and "nope" in err and len(err.splitlines()) == 1
        code, _, err = await raftlog("topic", "describe", "nope")
        assert code == 1 and err.startswith("raftlog topic describe: ") and "nope" in err
        code, _, err = await raftlog("topic", "delete", "default")
        assert code == 1 and err.startswith("raftlog topic delete: ")

        # retention replaced while running: no byte limit, a one-hour age limit
        code, out, err = await raftlog(
            "topic", "set-retention", "orders", "--retention-ms", "3600000"
        )
        assert code == 0, err
        assert out.splitlines()[0] == (
            f"topic orders: {PARTITIONS} partitions, replication 2, retention bytes -, "
            "retention ms 3600000"
        )
        code, out, err = await raftlog("topic", "list")
        assert ["orders", str(PARTITIONS), "2", "-", "3600000"] in [
            line.split() for line in out.splitlines()
        ], out
        code, _, err = await raftlog("topic", "set-retention", "default", "--retention-ms", "1")
        assert code == 1 and err.startswith("raftlog topic set-retention: "), err
        code, _, err = await raftlog("topic", "set-retention", "orders", "--retention-ms", "-1")
        assert code == 2 and "--retention-ms must be >= 0" in err

        code, out, err = await raftlog("topic", "delete", "orders")
        assert code == 0, err
        assert out == "deleted topic orders\n"
        code, out, err = await raftlog("topic", "list", "--format", "json")
        assert code == 0 and [t["name"] for t in json.loads(out)] == ["default"], err
