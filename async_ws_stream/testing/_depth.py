"""DepthFeed: a Binance-style order-book feed on a FeedServer, with a snapshot route and gaps on demand.

The feed keeps the true book of each symbol. Every update it makes changes
that book and is broadcast as a diff event; :meth:`DepthFeed.skip` makes the
next updates change the book without being sent, so a client sees a hole in
the sequence and must resynchronise from a snapshot to be right again, which
a test checks by comparing its book with :meth:`DepthFeed.book`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ._common import check_count
from ._server import FeedServer

SNAPSHOT_METHOD = "depth.snapshot"

Book = dict[str, dict[str, str]]
"""``{"bids": {price: qty}, "asks": {price: qty}}``, prices and quantities as decimal strings."""


def apply_depth_update(book: Book, event: Mapping[str, Any]) -> None:
    """Apply a diff event's ``"b"`` and ``"a"`` levels to ``book`` in place (qty ``"0"`` removes a level)."""
    for side, key in (("bids", "b"), ("asks", "a")):
        levels = book.setdefault(side, {})
        for price, qty in event[key]:
            if float(qty) == 0:
                levels.pop(price, None)
            else:
                levels[price] = qty


def book_from_snapshot(snapshot: Mapping[str, Any]) -> Book:
    """Return the book a snapshot (``{"lastUpdateId", "bids", "asks"}``) describes."""
    return {"bids": {p: q for p, q in snapshot["bids"]}, "asks": {p: q for p, q in snapshot["asks"]}}


class _Symbol:
    __slots__ = ("name", "book", "last_id", "mid", "skip")

    def __init__(self, name: str, mid: float) -> None:
        self.name = name
        self.book: Book = {"bids": {}, "asks": {}}
        self.last_id = 0
        self.mid = mid
        self.skip = 0


class DepthFeed:
    """Order books for ``symbols`` on ``server``: diff events, a snapshot route, and sequence gaps.

    On construction the feed routes ``{"method": "depth.snapshot", "params":
    {"symbol": S}}`` on ``server``, answered with ``{"lastUpdateId": N,
    "bids": [[price, qty], ...], "asks": [...]}`` (bids best first, asks best
    first, ``levels`` of each, or ``"limit"`` of each if the params say so, as
    Binance's ``GET /api/v3/depth?limit=`` does) as the request's result. It
    replaces any route of that name. An unknown symbol is answered with an error.
    Updates touch at most ``levels + 2`` prices a side, so a snapshot with
    ``"limit": levels + 2`` or more is the whole true book.

    Each update is a Binance diff event ``{"e": "depthUpdate", "E": ms, "s":
    symbol, "U": first, "u": last, "b": [[price, qty], ...], "a": [...]}``
    covering update ids ``first..last`` (one per level changed), so that
    without gaps every event's ``U`` is the previous ``u`` plus one, and the
    first event to apply over a snapshot is the one with ``U <= lastUpdateId
    + 1 <= u``. Quantity ``"0"`` removes a level.

    Args:
        server: The FeedServer that broadcasts and answers snapshots; it
            must route on ``"method"`` (the default).
        symbols: The books to keep.
        levels: Levels per side in a new book and in a snapshot.
        seed: Seeds the random changes, for a repeatable feed.
        first_update_id: Update id of the initial books.

    Raises:
        ValueError: If ``symbols`` is empty or ``levels`` < 1.
    """

    def __init__(
        self,
        server: FeedServer,
        *,
        symbols: Iterable[str] = ("BTCUSDT",),
        levels: int = 10,
        seed: int | None = None,
        first_update_id: int = 1000,
    ) -> None:
        names = list(symbols)
        if not names or not all(isinstance(s, str) and s for s in names):
            raise ValueError(f"DepthFeed: symbols must be non-empty strings, got {names!r}")
        if check_count("DepthFeed", levels, "levels") < 1:
            raise ValueError("DepthFeed: levels must be >= 1, got 0")
        self._server = server
        self._levels = levels
        self._rng = random.Random(seed)
        self._symbols = {name: _Symbol(name, 100.0 * (i + 1)) for i, name in enumerate(names)}
        self.sent: int = 0
        """Diff events broadcast."""
        self.skipped: int = 0
        """Diff events applied to the true book but never sent (the gaps made)."""
        for sym in self._symbols.values():
            sym.last_id = check_count("DepthFeed", first_update_id, "first_update_id")
            for i in range(1, levels + 1):
                sym.book["bids"][self._price(sym.mid - i)] = self._qty()
                sym.book["asks"][self._price(sym.mid + i)] = self._qty()
        server.route(SNAPSHOT_METHOD, self._snapshot_route)

    # The truth

    def book(self, symbol: str) -> Book:
        """A copy of the true book of ``symbol``: every update made so far, sent or skipped."""
        sym = self._get(symbol)
        return {"bids": dict(sym.book["bids"]), "asks": dict(sym.book["asks"])}

    def last_update_id(self, symbol: str) -> int:
        """The id of the last update made to ``symbol``'s book."""
        return self._get(symbol).last_id

    def snapshot(self, symbol: str, limit: int | None = None) -> dict[str, Any]:
        """``{"lastUpdateId", "bids", "asks"}`` of ``symbol`` now, ``limit`` (default ``levels``) best of each side."""
        sym = self._get(symbol)
        depth = self._levels if limit is None else check_count("DepthFeed.snapshot", limit, "limit")
        bids = sorted(sym.book["bids"].items(), key=lambda kv: float(kv[0]), reverse=True)[:depth]
        asks = sorted(sym.book["asks"].items(), key=lambda kv: float(kv[0]))[:depth]
        return {"lastUpdateId": sym.last_id, "bids": [list(kv) for kv in bids], "asks": [list(kv) for kv in asks]}

    # Updates and gaps

    def skip(self, n: int = 1, symbol: str | None = None) -> None:
        """Make the next ``n`` updates of ``symbol`` (every symbol for None) without sending them.

        Calls add up. The true book moves on; the client's next event then
        starts past the id it expects.

        Raises:
            ValueError: If ``n`` is not an int >= 0 or the symbol is unknown.
        """
        check_count("DepthFeed.skip", n)
        for sym in self._symbols.values() if symbol is None else (self._get(symbol),):
            sym.skip += n

    @property
    def pending_skips(self) -> int:
        """Updates still to be skipped, over every symbol."""
        return sum(sym.skip for sym in self._symbols.values())

    def next_update(self, symbol: str) -> dict[str, Any]:
        """Make one update to ``symbol``'s book and return its diff event (sent by :meth:`publish`, not here)."""
        sym = self._get(symbol)
        bids: list[list[str]] = []
        asks: list[list[str]] = []
        for _ in range(self._rng.randint(1, 3)):
            side, out = (("bids", bids), ("asks", asks))[self._rng.randrange(2)]
            offset = self._rng.randint(1, self._levels + 2)
            price = self._price(sym.mid - offset if side == "bids" else sym.mid + offset)
            if price in sym.book[side] and self._rng.random() < 0.3:
                qty = "0.00000000"
            else:
                qty = self._qty()
            out.append([price, qty])
        first = sym.last_id + 1
        sym.last_id += len(bids) + len(asks)
        event = {"e": "depthUpdate", "E": int(time.time() * 1000), "s": sym.name, "U": first, "u": sym.last_id,
                 "b": bids, "a": asks}
        apply_depth_update(sym.book, event)
        return event

    async def publish(self, count: int = 1, *, symbol: str | None = None) -> list[dict[str, Any]]:
        """Make ``count`` updates per symbol (or of ``symbol``), broadcasting those not skipped; return the sent ones.

        Raises:
            ValueError: If ``count`` is not an int >= 0 or the symbol is unknown.
        """
        check_count("DepthFeed.publish", count, "count")
        targets = list(self._symbols.values()) if symbol is None else [self._get(symbol)]
        sent: list[dict[str, Any]] = []
        for _ in range(count):
            for sym in targets:
                event = self.next_update(sym.name)
                if sym.skip:
                    sym.skip -= 1
                    self.skipped += 1
                    continue
                await self._server.broadcast(event)
                self.sent += 1
                sent.append(event)
        return sent

    # Inside

    def _get(self, symbol: str) -> _Symbol:
        try:
            return self._symbols[symbol]
        except (KeyError, TypeError):
            raise ValueError(f"DepthFeed: unknown symbol {symbol!r}; known: {sorted(self._symbols)}") from None

    def _snapshot_route(self, params: Any) -> dict[str, Any]:
        symbol = params.get("symbol") if isinstance(params, dict) else None
        if not isinstance(symbol, str):
            raise ValueError(f"depth.snapshot: params must be {{'symbol': name}}, got {params!r}")
        return self.snapshot(symbol, params.get("limit"))

    def _price(self, value: float) -> str:
        return f"{value:.2f}"

    def _qty(self) -> str:
        return f"{self._rng.uniform(0.001, 5):.8f}"
