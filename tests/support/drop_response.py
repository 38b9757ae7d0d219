"""A client interceptor that loses answers: the request reaches the server and is handled,
then the client sees UNAVAILABLE instead of the response (what a connection cut right
after the server answered looks like). Used to test the idempotent producer's retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class DropResponses(grpc.aio.UnaryUnaryClientInterceptor):
    """Drops the responses of the first ``count`` calls to a method ending in ``suffix``,
    after awaiting them (so the server did the work); keeps what it dropped."""

    def __init__(self, count: int = 1, suffix: str = "/Produce") -> None:
        self.count = count
        self.suffix = suffix
        #: The responses the client never saw, in order.
        self.dropped: list[Any] = []

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(client_call_details, request)
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        if self.count > 0 and name.endswith(self.suffix):
            response = await call  # the server handled it and answered
            self.count -= 1
            self.dropped.append(response)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="the test dropped this response",
            )
        return call
