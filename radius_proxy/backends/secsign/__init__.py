"""The SecSign ID client: the pipeline's second factor, over the legacy form API or REST v2.

`client.py` runs pushes (async, polling, fallback, cancel); `legacy.py` and `rest.py` turn
requests and answers into values with no I/O; `replies.py` says what those values mean;
`transport.py` is the blocking HTTP exchange that runs on a worker thread.
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
