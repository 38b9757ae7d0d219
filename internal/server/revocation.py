"""Revocation on the gRPC server: refuse calls whose client certificate is on the deny list.

The deny list (:class:`raftlog.security.denylist.DenyList`) names serial numbers and
subjects. gRPC's Python API has no hook inside its TLS handshake, so the check runs on every
call (UNAUTHENTICATED, "... is on the deny list") and, once the list has been reloaded, again
at the next message of every stream already open.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import grpc
from cryptography import x509

from raftlog.domain.errors import UnauthenticatedError
from raftlog.security.denylist import DenyList
from raftlog.server.interceptors import Continuation, Handler, WrapCache, _checked, subject_of

#: Parsed serial numbers kept per certificate (PEM bytes -> serial).
_SERIAL_CACHE_MAX = 1024


class RevocationInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a client certificate whose serial or subject is denied."""

    def __init__(self, deny_list: DenyList) -> None:
        self._deny = deny_list
        self._serials: OrderedDict[bytes, int] = OrderedDict()
        self._wrapped = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._wrapped.get(
            method, handler, lambda: _checked(handler, method, self._check, self._generation)
        )

    def _generation(self) -> int:
        return self._deny.generation

    def _serial(self, context: Any) -> int | None:
        pems: Any = context.auth_context().get("x509_pem_cert")
        if not pems:
            return None
        pem = next(iter(pems))
        pem = pem if isinstance(pem, bytes) else str(pem).encode()
        serial = self._serials.get(pem)
        if serial is None:
            serial = x509.load_pem_x509_certificate(pem).serial_number
            self._serials[pem] = serial
            if len(self._serials) > _SERIAL_CACHE_MAX:
                self._serials.popitem(last=False)
        return serial

    def _check(self, method: str, context: Any) -> None:
        entries = self._deny.entries
        if not entries.serials and not entries.subjects:
            return
        reason = self._deny.refuses(subject_of(context), self._serial(context))
        if reason is not None:
            raise UnauthenticatedError(f"{method}: {reason} (revoked)")
