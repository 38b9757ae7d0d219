"""raftlog.api.status: the one encoder and decoder of the rich status (issue 11)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from raftlog.api.contract import ERROR_DOMAIN, STATUS_DETAILS_KEY, Key, Reason
from raftlog.api.status import ErrorInfo, error_info_from_metadata, status_details

CODE = grpc.StatusCode.UNAVAILABLE.value[0]


def test_what_the_server_encodes_the_client_decodes() -> None:
    metadata = {Key.LEADER_ID: "n2", Key.LEADER_ADDR: "10.0.0.2:8400"}
    trailer = status_details(CODE, "not the leader", Reason.NOT_LEADER, metadata)
    status = status_pb2.Status.FromString(trailer)
    assert (status.code, status.message) == (CODE, "not the leader")
    trailing = (("other", "x"), (STATUS_DETAILS_KEY, trailer))
    assert error_info_from_metadata(trailing) == ErrorInfo(Reason.NOT_LEADER, metadata)


def test_no_trailer_a_foreign_domain_or_garbage_decode_to_none() -> None:
    assert error_info_from_metadata(None) is None
    assert error_info_from_metadata(()) is None
    assert error_info_from_metadata(((STATUS_DETAILS_KEY, b"\xff\xff not a status"),)) is None
    foreign = error_details_pb2.ErrorInfo(reason="QUOTA", domain="example.com")
    detail = any_pb2.Any()
    detail.Pack(foreign)
    trailer = status_pb2.Status(code=CODE, message="m", details=[detail]).SerializeToString()
    assert error_info_from_metadata(((STATUS_DETAILS_KEY, trailer),)) is None
    assert ERROR_DOMAIN == "raftlog"  # what every raftlog server has always sent
