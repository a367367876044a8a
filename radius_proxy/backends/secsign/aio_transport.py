"""HTTP to the ID server on the event loop itself, with aiohttp.

The first transport ran requests on a pool of worker threads. The wait-at-scale benchmark
(docs/performance.md) showed its limit: with 10,000 pushes waiting, 32 threads managed about
400 state polls a second (an effective poll interval of 25 s instead of 2 s), and the
threads' share of the interpreter lock pushed Status-Server answers past 300 ms. aiohttp
keeps every connection on the loop: no threads, connection reuse per server, a bound on
connections (`secsign.max_connections`), TLS verified with the system store or `ca_file`.

Requests are encoded exactly as before: the query string and the legacy form body with
`urllib.parse.urlencode`, so both APIs see the same octets as from any SecSign client.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.parse

import aiohttp
from yarl import URL

from radius_proxy.backends.secsign.transport import (
    MAX_BODY_BYTES,
    USER_AGENT,
    HttpRequest,
    HttpResponse,
    TransportError,
)

_FORM = "application/x-www-form-urlencoded"


def _basic(user: str, password: str) -> str:
    """RFC 7617 Basic credentials, Latin-1 like requests, UTF-8 when Latin-1 cannot hold them."""
    raw = f"{user}:{password}"
    try:
        octets = raw.encode("latin-1")
    except UnicodeEncodeError:
        octets = raw.encode("utf-8")
    return "Basic " + base64.b64encode(octets).decode("ascii")


class AiohttpTransport:
    """An async `Transport`: `await transport(request, timeout)`; one session, reused."""

    def __init__(self, ca_file: str = "", max_connections: int = 32) -> None:
        self._ssl = ssl.create_default_context(cafile=ca_file or None)
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl,
                                             enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=True,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json, text/plain"})
        return self._session

    async def __call__(self, request: HttpRequest, seconds: float) -> HttpResponse:
        url = request.url
        if request.params:
            url += "?" + urllib.parse.urlencode(request.params)
        headers: dict[str, str] = {}
        body: bytes | None = None
        if request.form is not None:
            body = urllib.parse.urlencode(request.form).encode("ascii")
            headers["Content-Type"] = _FORM
        if request.auth:
            headers["Authorization"] = _basic(*request.auth)
        try:
            async with self._client().request(
                request.method, URL(url, encoded=True), data=body, headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                data = await response.content.read(MAX_BODY_BYTES + 1)
                if len(data) > MAX_BODY_BYTES:
                    raise TransportError(f"answer larger than {MAX_BODY_BYTES} bytes")
                return HttpResponse(response.status, data)
        except aiohttp.ClientConnectorCertificateError as error:
            cert = error.certificate_error
            reason = getattr(cert, "verify_message", None) or str(cert)
            raise TransportError(f"TLS certificate verification failed: {reason} "
                                 "(check secsign.ca_file)") from None
        except aiohttp.ClientSSLError:
            raise TransportError("TLS handshake failed (SSLError)") from None
        except TimeoutError:
            raise TransportError("Timeout") from None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            # The class name says enough; messages carry the whole URL.
            raise TransportError(type(error).__name__) from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)
