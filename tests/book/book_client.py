"""A foreign client: uses ONLY code generated from the book's proto (run as a subprocess).

Usage: book_client.py GEN_DIR ADDR CA CERT KEY. Prints one JSON object with what it saw.
It runs in its own process so that its ``log.v1`` descriptors never meet raftlog's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    gen_dir, addr, ca, cert, key = sys.argv[1:6]
    sys.path.insert(0, gen_dir)
    import grpc
    import log_pb2  # generated from tests/book/log.proto
    import log_pb2_grpc

    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
    out: dict[str, object] = {}
    with grpc.secure_channel(addr, creds) as channel:
        stub = log_pb2_grpc.LogStub(channel)
        first = stub.Produce(log_pb2.ProduceRequest(record=log_pb2.Record(value=b"book-1")))
        out["produce"] = first.offset
        got = stub.Consume(log_pb2.ConsumeRequest(offset=first.offset))
        out["consume"] = [got.record.offset, got.record.value.decode()]
        reqs = [log_pb2.ProduceRequest(record=log_pb2.Record(value=b"s%d" % i)) for i in range(3)]
        out["produce_stream"] = [r.offset for r in stub.ProduceStream(iter(reqs))]
        stream = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=first.offset))
        seen = []
        for resp in stream:
            seen.append([resp.record.offset, resp.record.value.decode()])
            if len(seen) == 4:
                stream.cancel()
                break
        out["consume_stream"] = seen
        servers = stub.GetServers(log_pb2.GetServersRequest())
        out["servers"] = [[s.id, s.rpc_addr, s.is_leader] for s in servers.servers]
        try:
            stub.Consume(log_pb2.ConsumeRequest(offset=1000))
        except grpc.RpcError as exc:
            out["out_of_range"] = [exc.code().name, exc.details()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
