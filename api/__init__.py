"""raftlog's public API: the protobuf contract and its generated code (``raftlog.api.v1``)."""
