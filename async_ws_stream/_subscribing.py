"""The subscription calls of the client: ``subscribe``, ``unsubscribe``, ``subscriptions``, ``current_shard``.

:class:`Subscribing` is their public face, which :class:`~async_ws_stream.AsyncWsStream`
inherits; :mod:`._shards` does the work.
"""

from __future__ import annotations

from collections.abc import Hashable

from ._options import DEFAULT_SUBSCRIBE_TIMEOUT
from ._shards import ShardInfo, Shards, current_shard

__all__ = ["Subscribing"]


class Subscribing:
    """The subscription calls of :class:`~async_ws_stream.AsyncWsStream`, which inherits them.

    The client provides ``_shards`` and ``_check_open``.
    """

    _shards: Shards

    def _check_open(self, what: str) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    async def subscribe(self, *topics: Hashable, timeout: float | None = DEFAULT_SUBSCRIBE_TIMEOUT) -> None:
        """Add ``topics`` to the declared set and return once the server acknowledged them.

        Topics are hashable (``"btcusdt@trade"``, a tuple). A topic already in the
        set is not sent again (two calls for it share one exchange). The messages
        come from ``_subscribe_message(topics)``, split by ``max_topics_per_message``,
        and go out as requests through the connection's ``send_rate``. Made while
        disconnected, the call waits: the next connection subscribes the whole set
        before it carries traffic, and so does every later one.

        When the set outgrows ``max_subscriptions_per_connection``, new topics go to
        further connections (shards), spread evenly; each shard keeps its topics.

        Raises:
            SubscribeError: the server refused a message; its topics are out of the set.
            Timeout: not acknowledged within ``timeout`` seconds (the whole call,
                the wait for a connection included); the topics stay in the set.
            NotImplementedError: no ``_subscribe_message`` hook.
            TypeError: a topic that is not hashable, or a hook's message that cannot be sent.
            ClientClosed: after :meth:`exit`. RetriesExhausted, ConnectionRejected: the client gave up.
        """
        self._check_open("subscribe")
        self._start()
        await self._shards.subscribe(topics, timeout)

    async def unsubscribe(self, *topics: Hashable, timeout: float | None = DEFAULT_SUBSCRIBE_TIMEOUT) -> None:
        """Remove ``topics`` from the declared set; return once the server acknowledged.

        Topics not in the set are ignored. While disconnected it returns at once:
        no later connection subscribes them. A shard (other than the first) left
        with no topic closes its connection.

        Raises:
            SubscribeError: the server refused the unsubscribe (the topics are out of the set anyway).
            Timeout: no ack within ``timeout`` seconds.
            NotImplementedError: no ``_unsubscribe_message`` hook.
            ClientClosed: after :meth:`exit`.
        """
        self._check_open("unsubscribe")
        self._start()
        await self._shards.unsubscribe(topics, timeout)

    @property
    def subscriptions(self) -> frozenset[Hashable]:
        """The declared topics, over every shard (acknowledged or on their way)."""
        return self._shards.topics

    @property
    def current_shard(self) -> ShardInfo:
        """The shard whose connection the running hook serves (shard 0 outside any shard's task).

        Read it in ``_create_ws`` to put a shard's topics in the URL, or in
        ``_on_connect`` to log in differently per connection.
        """
        shard = current_shard()
        return (shard or self._shards.first).info()
