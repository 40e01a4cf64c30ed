"""Talking to the server on the client's connection: send, and the wait for a connection.

:class:`Sending` is the public face of it on the client (``send``,
``wait_connected``, ``present_ws``), which inherits it. Everything goes out on
shard 0's connection, the client's first; subscriptions go to their own shard's
(see :mod:`._shards`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ._lifecycle import Tasks
from ._link import Link
from ._options import Default
from ._redact import describe
from ._scopes import check_not_in_on_connect
from ._supervisor import Supervisor
from .exceptions import Timeout

__all__ = ["Sending"]


class Sending:
    """The sending calls of :class:`~async_ws_stream.AsyncWsStream`.

    The client provides ``_supervisor`` (shard 0's), ``_tasks``, ``_send_timeout``,
    ``_serialize``, ``_check_open`` and ``_start``.
    """

    _supervisor: Supervisor
    _tasks: Tasks
    _send_timeout: float | None
    _serialize: Callable[[Any], str | bytes]  # the hook, from ClientHooks

    def _check_open(self, what: str) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    @property
    def present_ws(self) -> Any:
        """The connection new sends go out on, or None while there is none."""
        current = self._supervisor.current
        return current.ws if current is not None else None

    async def wait_connected(self, timeout: float | None = None) -> Any:
        """Wait until a connection is up and return it.

        Raises:
            Timeout: none within ``timeout`` seconds; it names the last connection
                failure, if there was one, and chains it.
            ClientClosed: the client exited.
            RetriesExhausted, ConnectionRejected: the client gave up.
        """
        return (await self._wait_link(timeout, "wait_connected")).ws

    async def _wait_link(self, timeout: float | None, what: str) -> Link:
        self._check_open(what)
        check_not_in_on_connect(what)
        if not self._tasks.started:
            self._start()
        gate = self._supervisor.gate
        if gate.value is not None:
            return gate.value
        try:
            async with asyncio.timeout(timeout):
                return await gate.wait()
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise self._no_connection(what, timeout) from exc

    def _no_connection(self, what: str, timeout: float | None) -> Timeout:
        """The error of a wait for a connection that ran out, naming why none could be made."""
        last = self._supervisor.last_error
        if last is None:
            return Timeout(f"{what}: no connection within {timeout}s")
        error = Timeout(f"{what}: no connection within {timeout}s; the last attempt failed: {describe(last)}")
        error.__cause__ = last
        return error

    async def send(self, msg: Any, *, timeout: float | None | Default = Default.TIMEOUT) -> None:
        """Send ``msg``: ``str``/``bytes`` as they are, anything else through :meth:`_serialize`.

        Waits for a connection first, and with ``send_rate`` for a token, up to
        ``timeout`` seconds in all (default: the client's ``send_timeout``).

        Raises:
            Timeout: no connection, or the send did not complete, in time.
            ConnectionLost: the connection closed while sending.
            ClientClosed: after :meth:`exit`.
        """
        limit = self._send_timeout if isinstance(timeout, Default) else timeout
        data = msg if isinstance(msg, (str, bytes, bytearray, memoryview)) else self._serialize(msg)
        conn: Link | None = None
        try:
            async with asyncio.timeout(limit):
                conn = await self._wait_link(None, "send")
                await conn.send(data)
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            if conn is None:
                raise self._no_connection("send", limit)  # chains the last failure
            raise Timeout(f"send: not sent within {limit}s") from exc

