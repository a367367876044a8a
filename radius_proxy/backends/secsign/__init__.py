"""The SecSign ID client: the pipeline's second factor, over the legacy form API or REST v2.

`client.py` runs pushes (async, fallback, cancel); `poller.py` decides when each waiting push
is polled, with one timer and a few workers for all of them; `legacy.py` and `rest.py` turn
requests and answers into values with no I/O; `replies.py` says what those values mean;
`aio_transport.py` and `transport.py` are the HTTP exchange, on the loop or on a worker thread.
"""

from __future__ import annotations

from radius_proxy.backends.secsign.client import SecSignClient
from radius_proxy.backends.secsign.transport import (
    HttpRequest,
    HttpResponse,
    RequestsTransport,
    Transport,
    TransportError,
)

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "RequestsTransport",
    "SecSignClient",
    "Transport",
    "TransportError",
]
