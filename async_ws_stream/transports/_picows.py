"""picows_connect: open a PicowsConnection, with websockets' options, exceptions and guarantees."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl as ssl_module
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from loguru import logger
from websockets.datastructures import Headers
from websockets.exceptions import (
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
    InvalidUpgrade,
    InvalidURI,
    NegotiationError,
)
from websockets.http11 import Response

from . import _picows_frames
from ._common import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_READ_SIZE,
    PARSE_BUDGET,
    HeadersLike,
    Interposed,
    check_int,
    check_max_queue,
    check_read_size,
    check_seconds,
)
from ._picows_conn import PicowsConnection

#: Most messages one socket read may bring picows before the next reads are made
#: smaller: the client's receive loop takes a read's messages in one go, so this
#: bounds that too. 4 MiB of 200-byte frames is some 21,000.
READ_MESSAGES = 32_768
# Reads never shrink below this: a handful of ordinary frames.
_MIN_READ = 4096
# How long a failed attempt waits for picows' transport to close its socket.
_CUT_TIMEOUT = 1.0

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_URL = re.compile(r"(wss?://[^/\s?#'\"]+)[^\s'\"]*", re.IGNORECASE)

if _picows_frames.picows is not None:
    USER_AGENT: str | None = (
        f"Python/{sys.version_info.major}.{sys.version_info.minor} "
        f"picows/{_picows_frames.picows.version.__version__}"
    )
else:
    USER_AGENT = f"Python/{sys.version_info.major}.{sys.version_info.minor}"


class _ToLoguru(logging.Handler):
    """Hands picows' log records (its parser errors, say) to loguru, under this library's name."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "ERROR" if record.levelno >= logging.ERROR else "WARNING" if record.levelno >= logging.WARNING \
            else "INFO" if record.levelno >= logging.INFO else "DEBUG"
        text = _URL.sub(r"\1/...", record.getMessage())
        logger.log(level, "picows: {:.300}", text)


def _picows_logger() -> logging.Logger:
    # Made directly, not with logging.getLogger: it is in no registry, has no
    # parent, so nothing reaches the root logger or the user's "picows" loggers;
    # picows hangs each connection's logger under it. INFO keeps picows' per-frame
    # debug logging (and its cost) off.
    log = logging.Logger("async_ws_stream.picows", logging.INFO)
    log.propagate = False
    log.addHandler(_ToLoguru())
    return log


_PICOWS_LOG = _picows_logger()


class _Socket(socket.socket):
    """The socket of one attempt: it remembers its peer and tells when it is closed.

    picows re-connects a socket whose ``getpeername`` fails, which it does when
    the server reset the connection right after accepting it; if that connect
    fails, nothing closes the socket. This one always answers with the address
    it connected to, so picows hands it to a transport, which closes it.
    """

    __slots__ = ("closed", "peer")

    def __init__(self, family: int, type_: int, proto: int) -> None:
        super().__init__(family, type_, proto)
        self.peer: Any = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def getpeername(self) -> Any:
        return self.peer if self.peer is not None else super().getpeername()

    def close(self) -> None:
        super().close()
        if not self.closed.done():
            self.closed.set_result(None)


async def picows_connect(
    url: str,
    *,
    # Handshake
    additional_headers: HeadersLike | None = None,
    extra_headers: HeadersLike | None = None,
    user_agent_header: str | None = USER_AGENT,
    subprotocols: Sequence[str] | None = None,
    # TLS
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    # Timeouts
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    # Limits
    max_size: int | None = DEFAULT_MAX_SIZE,
    max_queue: int | tuple[int | None, int | None] | None = DEFAULT_MAX_QUEUE,
    read_size: int = DEFAULT_READ_SIZE,
) -> PicowsConnection:
    """Open a websocket connection with picows; return it once the handshake is done.

    The options mean what they mean for ``websockets.connect`` and have its
    defaults, so a ``_create_ws`` switches transports by changing the function
    it calls.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        additional_headers: Extra request headers (a mapping or ``(name, value)``
            pairs). ``extra_headers`` is accepted as a synonym (picows' and older
            websockets' name); give one or the other.
        extra_headers: See ``additional_headers``.
        user_agent_header: ``User-Agent`` sent unless the headers carry one;
            None sends none.
        subprotocols: Subprotocols to offer, in order of preference (sent in
            ``Sec-WebSocket-Protocol``); the server's choice is the
            connection's ``subprotocol`` (None if it chose none).
        ssl: TLS context for ``wss://`` (default: the system's trusted CAs).
        server_hostname: Name to check the server's certificate against
            (default: the URL's host).
        open_timeout: Seconds for TCP connect, TLS and handshake together; None
            waits for ever.
        ping_interval: Seconds between keepalive pings; None sends none.
        ping_timeout: Seconds to wait for a pong before failing the connection
            (close 1011, then drop); None waits for ever.
        close_timeout: Seconds to wait for the server to finish a closing
            handshake before dropping the connection; None waits for ever.
        max_size: Largest message accepted, in bytes; a larger one fails the
            connection with close code 1009. None for no limit.
        max_queue: High-water mark of the receive buffer, in messages, or a
            ``(high, low)`` pair (low defaults to high // 4). Above it the
            socket is not read until ``recv`` has brought the buffer down to
            the low mark. None for no limit.
        read_size: Most bytes taken from the socket at once (see the package's
            docstring); picows grows its buffer to this while reads fill it. A
            read whose frames take picows longer than ``PARSE_BUDGET`` seconds,
            or that brings more than ``READ_MESSAGES`` messages, makes the
            next reads smaller, so that a flood of tiny frames never holds the
            event loop for long; reads grow back when frames are ordinary.

    Raises:
        ImportError: picows is not installed.
        TypeError: an argument of the wrong type, named in the message.
        ValueError: an argument of the right type but out of range.
        websockets.exceptions.InvalidURI: ``url`` is not a websocket URL.
        websockets.exceptions.InvalidStatus: the server refused the handshake
            with an HTTP status (``exc.response`` holds the status, headers and body).
        websockets.exceptions.InvalidHandshake: any other bad handshake response
            (``InvalidMessage``, ``InvalidHeader``, ``InvalidUpgrade``), and
            ``NegotiationError`` when the server chose a subprotocol that was
            not offered.
        TimeoutError: no connection within ``open_timeout`` seconds.
        OSError: the TCP connection or TLS failed.

    Cancelling it is safe: a connection being opened is closed. Whatever
    point an attempt fails at (refused, reset at accept or in the handshake,
    timeout, TLS), its socket is closed before the exception reaches the caller.
    """
    if _picows_frames.picows is None:
        raise ImportError(
            "picows_connect needs picows, a compiled websocket client: pip install 'async_ws_stream[fast]' "
            "(or pip install picows), or use websockets.connect"
        )
    picows = _picows_frames.picows
    if not isinstance(url, str):
        raise TypeError(f"picows_connect: url must be a str, got {type(url).__name__} {url!r:.60}")
    headers = _request_headers(additional_headers, extra_headers, user_agent_header)
    offered = _check_subprotocols(subprotocols)
    if offered:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(offered)))
    for option, value in (("open_timeout", open_timeout), ("ping_interval", ping_interval),
                          ("ping_timeout", ping_timeout), ("close_timeout", close_timeout)):
        check_seconds("picows_connect", option, value)
    check_int("picows_connect", "max_size", max_size, 1, allow_none=True)
    check_read_size("picows_connect", read_size)
    check_max_queue("picows_connect", max_queue)
    secure = url[:6].lower() == "wss://"
    if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
        raise TypeError(f"picows_connect: ssl must be an ssl.SSLContext or None, got {type(ssl).__name__}")
    if not secure and ssl is not None:
        raise ValueError("picows_connect: ssl was given for a ws:// URL; use wss:// to enable TLS")
    if not secure and server_hostname is not None:
        raise ValueError("picows_connect: server_hostname was given for a ws:// URL; it only applies to wss://")

    conn = PicowsConnection(max_size=max_size, max_queue=max_queue, ping_interval=ping_interval,
                            ping_timeout=ping_timeout, close_timeout=close_timeout)
    made: list[_Socket] = []  # the socket picows was given, if it got that far

    async def open_socket(target: Any) -> socket.socket:
        # We make the socket so that a cancelled or timed-out attempt can be cut
        # short: picows gives nothing back until the handshake is done.
        loop = asyncio.get_running_loop()
        infos = _literal_address(target.host, target.port) or await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )
        errors: list[OSError] = []
        for family, type_, proto, _, address in infos:
            sock = _Socket(family, type_, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                errors.append(exc)
                continue
            except BaseException:
                sock.close()
                raise
            sock.peer = address
            conn._sock = sock
            made.append(sock)
            return sock
        if len(errors) == 1:
            raise errors[0]
        raise OSError(f"cannot connect to {target.host}:{target.port}: " + "; ".join(map(str, errors)))

    options: dict[str, Any] = {}
    if server_hostname is not None:
        options["server_hostname"] = server_hostname
    try:
        async with asyncio.timeout(open_timeout):
            _, listener = await picows.ws_connect(
                lambda: conn,
                url,
                ssl_context=ssl,
                socket_factory=open_socket,
                websocket_handshake_timeout=open_timeout,
                enable_auto_ping=False,  # our keepalive runs on timers, not in a task of picows
                enable_auto_pong=True,
                max_frame_size=sys.maxsize if max_size is None else max_size,
                extra_headers=headers,
                max_redirects=0,
                logger_name=_PICOWS_LOG,
                # aiofastnet's transport (picows' default when installed) registers
                # its reader after connection_made even when that already closed it
                # (a reset at accept): the closed fd stays in the selector, and the
                # next socket to get that number fails with FileNotFoundError.
                # asyncio's own transport checks first.
                use_aiofastnet=False,
                **options,
            )
        if listener is None:
            # picows returns no listener when the TCP connection ended before the response.
            raise InvalidMessage("did not receive a valid HTTP response: the connection closed during the handshake")
        conn._subprotocol = _chosen_subprotocol(conn, offered)
    except BaseException as exc:
        await _cut(conn, made[0] if made else None)
        translated = _translate(exc, url)
        if translated is None:
            raise
        raise translated from exc
    transport = conn._tr
    transport.set_protocol(_ReadGuard(transport.get_protocol(), conn, read_size))
    return conn


def _translate(exc: BaseException, url: str) -> BaseException | None:
    """The websockets exception for one of picows' (None: raise it as it is)."""
    picows: Any = _picows_frames.picows
    if isinstance(exc, picows.WSInvalidURL):
        return InvalidURI(url, str(exc))
    if isinstance(exc, picows.WSInvalidStatusError):
        return InvalidStatus(_response(exc))
    if isinstance(exc, picows.WSInvalidUpgradeError):
        return InvalidUpgrade(exc.name, exc.value)
    if isinstance(exc, picows.WSInvalidHeaderError):
        return InvalidHeader(exc.name, exc.value)
    if isinstance(exc, picows.WSHandshakeError):
        return InvalidMessage(f"invalid handshake response: {exc}")
    return None


def _check_subprotocols(subprotocols: object) -> list[str]:
    if subprotocols is None:
        return []
    if isinstance(subprotocols, (str, bytes)) or not isinstance(subprotocols, Sequence):
        raise TypeError(f"picows_connect: subprotocols must be a list of str, got {type(subprotocols).__name__} "
                        f"{subprotocols!r:.60}")
    for subprotocol in subprotocols:
        if not isinstance(subprotocol, str):
            raise TypeError(f"picows_connect: each subprotocol must be a str, got {type(subprotocol).__name__} "
                            f"{subprotocol!r:.60}")
        if not _TOKEN.fullmatch(subprotocol):
            raise ValueError(f"picows_connect: subprotocol {subprotocol!r:.60} is not an HTTP token "
                             "(letters, digits and !#$%&'*+-.^_`|~)")
    return list(subprotocols)


def _chosen_subprotocol(conn: PicowsConnection, offered: list[str]) -> str | None:
    """The server's choice, checked as websockets checks it (NegotiationError, InvalidHeader)."""
    response = conn.response
    values = response.headers.get_all("Sec-WebSocket-Protocol") if response is not None else []
    if not values:
        return None
    chosen = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not offered:
        raise NegotiationError("no subprotocols supported")
    if len(chosen) != 1:
        raise InvalidHeader("Sec-WebSocket-Protocol", f"multiple values: {', '.join(chosen)}")
    if chosen[0] not in offered:
        raise NegotiationError(f"unsupported subprotocol: {chosen[0]}")
    return chosen[0]


class _ReadGuard(Interposed):
    """Stands between the transport and picows' protocol: sizes each read, and notices picows failing.

    Capping each read is what makes the receive buffer's high-water mark hold
    within one read. The cap starts at ``limit`` (``read_size``) and adapts:
    picows parses a whole read in one callback, so after a read that took over
    ``PARSE_BUDGET`` seconds or brought over ``READ_MESSAGES`` messages (a flood
    of pings or one-byte frames) the next reads are smaller in proportion;
    after reads that were filled comfortably within both, the cap doubles back
    towards ``limit``.

    When picows' parser rejects a frame (over max_size: 1009; a protocol error:
    1002) it sends the close frame itself but keeps parsing what follows, and
    would deliver the rejected frame with the next read; once it has failed,
    the connection takes no more frames. Costs a few calls per read, not per
    frame.
    """

    __slots__ = ("_cap", "_conn")

    def __init__(self, protocol: Any, conn: PicowsConnection, limit: int) -> None:
        super().__init__(protocol, limit)
        self._conn = conn
        self._cap = limit

    def get_buffer(self, sizehint: int) -> Any:
        buffer = self._inner.get_buffer(sizehint)
        cap = self._cap
        return buffer if len(buffer) <= cap else buffer[:cap]

    def buffer_updated(self, nbytes: int) -> None:
        conn = self._conn
        queued = len(conn._messages)
        started = time.perf_counter()
        self._inner.buffer_updated(nbytes)
        took = time.perf_counter() - started
        brought = len(conn._messages) - queued
        if took > PARSE_BUDGET or brought > READ_MESSAGES:
            share = min(PARSE_BUDGET / took if took > PARSE_BUDGET else 1.0,
                        READ_MESSAGES / brought if brought > READ_MESSAGES else 1.0)
            self._cap = max(_MIN_READ, int(nbytes * share))
        elif nbytes >= self._cap < self._limit and took < PARSE_BUDGET / 2 and brought < READ_MESSAGES // 2:
            self._cap = min(self._limit, 2 * self._cap)
        if conn._sent is None and conn._ws.is_close_frame_sent:
            conn._failed_by_picows()


def _literal_address(host: str, port: int) -> list[tuple[Any, Any, Any, str, Any]] | None:
    """The address of an IP literal, without the resolver (a thread round trip), as asyncio does."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), port))]


async def _cut(conn: PicowsConnection, sock: _Socket | None) -> None:
    """End a connection whose opening failed or was cancelled, whatever stage it reached; return once its socket is closed."""
    if conn._tr is not None:
        conn._tr.abort()
        await conn.wait_closed()
        return
    conn._sock = None
    if sock is None or sock.closed.done():
        return  # never connected (open_socket closed its own), or closed already
    # The transport is picows' own until the handshake is done; shutting the
    # socket down makes it read end-of-file and close the socket itself.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more: the transport is closing it already
    try:
        async with asyncio.timeout(_CUT_TIMEOUT):
            await asyncio.shield(sock.closed)
    except TimeoutError:
        # No transport took it (picows failed before making one): it is ours to close.
        logger.debug("picows_connect: closing a socket no transport took")
        sock.close()


def _request_headers(
    additional: HeadersLike | None, extra: HeadersLike | None, user_agent: str | None
) -> list[tuple[str, str]]:
    if additional is not None and extra is not None:
        raise TypeError("picows_connect: give additional_headers or extra_headers, not both (they are synonyms)")
    given = additional if additional is not None else extra
    if given is None:
        pairs: list[tuple[str, str]] = []
    elif isinstance(given, Headers):
        pairs = list(given.raw_items())
    elif isinstance(given, Mapping):
        pairs = list(given.items())
    elif isinstance(given, (str, bytes)):
        raise TypeError(f"picows_connect: headers must be a mapping or (name, value) pairs, got {given!r:.60}")
    else:
        pairs = [tuple(pair) for pair in given]  # type: ignore[misc]
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise TypeError(f"picows_connect: each header must be a (str, str) pair, got {pair!r:.60}")
    if user_agent is not None and not isinstance(user_agent, str):
        raise TypeError(f"picows_connect: user_agent_header must be a str or None, got {type(user_agent).__name__}")
    if user_agent is not None and not any(name.lower() == "user-agent" for name, _ in pairs):
        pairs.append(("User-Agent", user_agent))
    return pairs


def _response(exc: Any) -> Response:
    """A websockets Response from picows' refused handshake, for InvalidStatus (Retry-After, status)."""
    response = exc.response
    return Response(
        int(response.status),
        response.status.phrase,
        Headers(response.headers.items()),
        exc.raw_body or b"",
    )
