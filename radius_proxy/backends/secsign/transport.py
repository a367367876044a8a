"""The contract of one HTTP exchange with an ID server, and a blocking transport on requests.

`HttpRequest`, `HttpResponse` and `TransportError` (with its `ErrorKind`) are what the client
and every transport share. Production runs HTTP on the event loop (`aio_transport.py`, our
own HTTP/1.1 client); `RequestsTransport` is the blocking alternative for a worker thread of
the client's bounded executor, and tests hand in a fake callable and never open a socket.

Why a `requests.Session` per worker thread rather than one shared session: requests does
not promise that a `Session` is thread-safe, and a worker runs one exchange at a time, so a
session per thread is safe by construction and still reuses its keep-alive connections. The
number of connections is bounded by the number of workers (`secsign.max_connections`).
"""

from __future__ import annotations

import enum
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter

from radius_proxy import __version__
from radius_proxy.errors import BackendError

#: An ID server's answers are a few hundred bytes; anything far bigger is not one.
MAX_BODY_BYTES = 1024 * 1024
USER_AGENT = f"radius-proxy/{__version__}"


class ErrorKind(enum.Enum):
    """Why no usable HTTP answer came, for callers that treat the cases apart.

    CERTIFICATE (the server's certificate did not verify: fix `secsign.ca_file` or the
    server), TLS (any other TLS failure), CONNECT (refused, unreachable, no such host),
    TIMEOUT (the request's total time ran out), CLOSED (the connection ended before the
    answer was complete), GARBAGE (bytes that are not an HTTP/1.x answer, or too many of
    them), OTHER (anything else, such as an unusable URL).
    """

    CERTIFICATE = "certificate"
    TLS = "tls"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    CLOSED = "closed"
    GARBAGE = "garbage"
    OTHER = "other"


class TransportError(BackendError):
    """No HTTP answer at all: refused, reset, TLS failure, timeout, an oversized body.

    The message is for logs (never a URL with credentials, never a credential); `kind` is
    for code.
    """

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.OTHER) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What to send; `auth` (the PIN account) is kept out of repr so it never reaches a log."""

    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    form: tuple[tuple[str, str], ...] | None = None
    auth: tuple[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


#: Send one request with a timeout in seconds; raise TransportError when nothing came back.
Transport = Callable[[HttpRequest, float], HttpResponse]


class RequestsTransport:
    """`Transport` on requests: TLS always verified (system CAs or `ca_file`), no redirects,
    no hidden retries (the client does its own fallback), bodies bounded."""

    def __init__(self, ca_file: str = "") -> None:
        self._verify: str | bool = ca_file or True
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def __call__(self, request: HttpRequest, timeout: float) -> HttpResponse:
        session = self._session()
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json, text/plain"}
        try:
            with session.request(
                request.method,
                request.url,
                params=list(request.params) or None,
                data=list(request.form) if request.form is not None else None,
                auth=request.auth,
                headers=headers,
                timeout=timeout,
                verify=self._verify,
                allow_redirects=False,
                stream=True,
            ) as response:
                return HttpResponse(response.status_code, _read_bounded(response))
        except requests.exceptions.SSLError as error:
            raise TransportError(*_tls_problem(error)) from error
        except requests.RequestException as error:
            # The class name says enough (ConnectTimeout, ReadTimeout...); requests' messages
            # are long and carry the whole URL.
            raise TransportError(type(error).__name__, _kind_of(error)) from error

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=2, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every thread's connections; call once no request is in flight."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _read_bounded(response: requests.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=16 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TransportError(f"answer larger than {MAX_BODY_BYTES} bytes",
                                 ErrorKind.GARBAGE)
        chunks.append(chunk)
    return b"".join(chunks)


def _kind_of(error: requests.RequestException) -> ErrorKind:
    if isinstance(error, requests.exceptions.Timeout):
        return ErrorKind.TIMEOUT
    if isinstance(error, requests.exceptions.ConnectionError):
        return ErrorKind.CONNECT
    return ErrorKind.OTHER


def _tls_problem(error: BaseException) -> tuple[str, ErrorKind]:
    """Say whether the certificate failed verification (and point at ca_file), or TLS itself."""
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return certificate_problem(item), ErrorKind.CERTIFICATE
        stack.extend([item.__cause__, item.__context__, *item.args])
    return "TLS handshake failed (SSLError)", ErrorKind.TLS


def certificate_problem(error: ssl.SSLCertVerificationError) -> str:
    """The log message for a certificate that did not verify, pointing at the fix."""
    return (f"TLS certificate verification failed: {error.verify_message} "
            "(check secsign.ca_file)")
