"""The hooks a subclass implements: how to open a connection, when to recycle it, how to parse a frame.

:class:`ClientHooks` holds them with their contracts and defaults;
:class:`~async_ws_stream.AsyncWsStream` inherits it, and the supervisor calls
them (see :class:`~._supervisor.Hooks`). The three abstract ones keep the names
users of the older package know.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from ._backoff import fatal_error
from ._events import Gap
from ._options import DEFAULT_FATAL_CLOSE_CODES
from .exceptions import ConnectionRejected

__all__ = ["ClientHooks"]

M = TypeVar("M")


class ClientHooks(abc.ABC, Generic[M]):
    """The overridable side of a client: three hooks to implement, the others with defaults.

    ``_sequence`` and ``_resync`` are optional: a subclass that does not define
    ``_sequence`` has no sequence tracking at all, and its receive loop is the
    plain one (see :mod:`._sequencer`).
    """

    #: With ``_resync``: resync every key at its first message after a connection
    #: opens (the first, and each after a loss; not a recycle's, which loses nothing).
    resync_on_connect: ClassVar[bool] = False
    #: Messages one key may hold while its resync runs; beyond, the oldest is dropped
    #: (counted in ``stats()["held_dropped"]``).
    resync_maxsize: ClassVar[int] = 10_000

    # Subscriptions and the venue's limits (see _shards and _subscriptions); each may
    # also be given as the constructor's keyword option of the same name.
    #: Topics one connection may carry; more open more connections (shards). None: no limit.
    max_subscriptions_per_connection: ClassVar[int | None] = None
    #: Topics in one subscribe message; a bigger set is split. None: one message.
    max_topics_per_message: ClassVar[int | None] = None
    #: ``(count, seconds)``: at most ``count`` frames sent per connection in any
    #: ``seconds`` (subscribes, requests, ``send``). None: no limit.
    send_rate: ClassVar[tuple[int, float] | None] = None
    #: ``(count, seconds)``: at most ``count`` connection attempts, over every shard.
    connect_rate: ClassVar[tuple[int, float] | None] = None
    #: Whether the venue answers a subscribe with a reply carrying the request's id
    #: (Binance, Bybit, Kraken's req_id): ``subscribe`` waits for it. False: sent, not awaited.
    subscription_acks: ClassVar[bool] = True

    #: The client's ``fatal_close_codes=`` option, set by its constructor.
    _fatal_close_codes: frozenset[int] = DEFAULT_FATAL_CLOSE_CODES

    @abc.abstractmethod
    async def _create_ws(self) -> Any:
        """Open and return a new connection (for example ``await websockets.connect(url)``)."""

    @abc.abstractmethod
    async def _when2create_new_ws(self) -> None:
        """Return (or raise) when the current connection must be replaced by a fresh one.

        Runs once per connection, from the moment it carries traffic.
        """

    @abc.abstractmethod
    def _parse_raw_data(self, raw: str | bytes) -> M | None | Any:
        """Turn one frame into a message; return None to skip the frame.

        May be a plain function (faster: no coroutine per frame) or a coroutine
        function. Raising counts the frame as a parse error; the stream goes on.
        """

    async def _on_connect(self, ws: Any) -> None:
        """Run on every new connection before it carries traffic; talk to ``ws`` directly.

        The connection is read only after this returns, so a reply must be read
        here with ``await ws.recv()`` (a handshake: send ``connection_init``, read
        ``connection_ack``). ``send``, ``request``, ``wait_for``, ``poll`` and
        ``wait_connected`` raise at once if called here (the client ends: the same
        call would fail on every connection); ``expect`` may be called here and
        awaited after the hook.
        """

    def _subscribe_message(self, topics: list[Any]) -> Any:
        """Return the message (or a list of messages) that subscribes ``topics``; needed by ``subscribe``.

        A dict, sent as a request: the client adds its id under ``request_id_key``
        and waits for the reply carrying it (Binance:
        ``{"method": "SUBSCRIBE", "params": topics}``). With ``subscription_acks =
        False``, any message ``send`` takes, not awaited. Return ``[]`` to send nothing
        (topics the URL carries: read ``self.current_shard.topics`` in ``_create_ws``).
        """
        raise NotImplementedError

    def _unsubscribe_message(self, topics: list[Any]) -> Any:
        """Return the message (or messages) that unsubscribes ``topics``, as :meth:`_subscribe_message`."""
        raise NotImplementedError

    def _reply_error(self, reply: Any) -> object | None:
        """Return what makes ``reply`` (to a subscribe or unsubscribe) an error, or None if it is an ack.

        By default a mapping with a truthy ``"error"`` (Binance, JSON-RPC), an
        ``"event"`` or ``"status"`` of ``"error"`` (OKX, Kraken) or ``"success": false``
        (Bybit) is an error. Override for other venues.
        """
        if isinstance(reply, Mapping):
            error: object = reply.get("error")
            if error:
                return error
            if reply.get("event") == "error" or reply.get("status") == "error" or reply.get("success") is False:
                return reply
        return None

    def _serialize(self, msg: Any) -> str | bytes:
        """Encode a non-``str``/``bytes`` message for :meth:`send` (default: compact JSON)."""
        return json.dumps(msg, separators=(",", ":"))

    def _is_fatal(self, exc: BaseException) -> ConnectionRejected | None:
        """Decide whether a connection failure ends the client instead of being retried.

        Return the error to end the client with, or None to retry. By default a
        handshake answered 401/403, a close code in ``fatal_close_codes`` (by default
        1008 and 4000-4999), an invalid
        URI, a TLS certificate that fails verification and a programming error
        in a hook (``TypeError``, ``AttributeError``, ...) are fatal
        (see :func:`async_ws_stream._backoff.fatal_error`).
        Override to change that; ``exc`` is what opening a connection raised
        (``_create_ws`` or ``_on_connect``, for a reconnect or for a recycle's new
        connection alike) or what ended the connection (a ``websockets``
        ``ConnectionClosed``). The returned error is what streams end with and
        what ``send``/``request``/``wait_connected`` raise from then on.
        """
        return fatal_error(exc, close_codes=self._fatal_close_codes)

    def _sequence(self, msg: M) -> tuple[Hashable, int, int] | None:
        """Optional: say which updates of which sequence ``msg`` carries, as ``(key, first, last)``.

        Binance depth diffs: ``(msg["s"], msg["U"], msg["u"])``; a plain counter:
        ``(key, n, n)``. Return None for a message outside any sequence (a reply,
        a trade). With this hook the client delivers each key's messages once and
        in order: one at or below the key's last number is a duplicate, dropped
        and counted (``stats()["duplicates"]``); one starting past ``last + 1`` is
        a gap: a :class:`~async_ws_stream.Gap` event, ``stats()["gaps"]``, and a
        resync if there is a ``_resync`` hook. A plain function (it runs for every
        message); raising counts in ``stats()["sequence_errors"]`` and the message
        is delivered untracked.
        """
        return None

    async def _resync(self, key: Any, gap: Gap | None) -> int | None:
        """Optional: bring ``key`` up to date (a REST snapshot) and return the number it is current to.

        Called, in a task of its own, on a gap (``gap`` says where) and, with
        ``resync_on_connect``, on a key's first message after a connect (``gap``
        None). Meanwhile that key's messages are held; when it returns ``n``,
        the held ones at or below ``n`` are discarded and the rest delivered in
        order (a hole between ``n`` and them is another gap; the discarded count in
        ``stats()["resync_discarded"]``). None: nothing is
        discarded, and the key starts again from the first held message. Raising
        is logged with its traceback, counted in ``stats()["resync_errors"]``,
        and retried after the client's backoff delays, the key still held.
        """
        return None
