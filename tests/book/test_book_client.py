"""A client generated at test time from the book's proto works against raftlog unchanged."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from grpc_tools import protoc

from raftlog.security import CertFiles
from support.api_node import running_node

HERE = Path(__file__).resolve().parent


def _compile_book_proto(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(HERE / "log.proto"),
        ]
    )
    assert rc == 0, "protoc failed on the book's proto"
    assert (out / "log_pb2.py").is_file() and (out / "log_pb2_grpc.py").is_file()


async def test_book_generated_client_produces_and_consumes(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    gen = tmp_path / "book-gen"
    _compile_book_proto(gen)
    root = dev_certs["root"]
    async with running_node(tmp_path / "node", dev_certs) as node:
        await node.local_log.append([b"pre-existing"])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "book_client.py"),
            str(gen),
            node.addr,
            str(root.ca_file),
            str(root.cert_file),
            str(root.key_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["produce"] == 1
    assert out["consume"] == [1, "book-1"]
    assert out["produce_stream"] == [2, 3, 4]
    assert out["consume_stream"] == [[1, "book-1"], [2, "s0"], [3, "s1"], [4, "s2"]]
    assert out["servers"] == [["test-node", node.addr, True]]
    code, details = out["out_of_range"]
    assert code == "OUT_OF_RANGE" and "lowest 0" in details and "highest 4" in details
