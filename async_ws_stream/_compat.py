"""The older package's names, kept so that code written for it runs with only the import changed.

``AsyncWebsocketStreamInterface`` 1.0.5 had ``stream_filter(_filters=None)``,
``add_handler(function_or_coroutine_function)``, ``wait_enter_handing_ws()``,
``present_ws``, ``send(msg)`` and ``exit()``. The client keeps each of them
with the same parameters; this room holds what only the old spellings need.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["OlderNames", "one_of"]

T = TypeVar("T")


def one_of(where: str, name: str, value: T, older: str, older_value: T, *, required: bool = False) -> T:
    """Return the argument given under ``name`` or under its older spelling ``older``.

    Raises:
        TypeError: both were given, or (``required``) neither.
    """
    if older_value is not None:
        if value is not None:
            raise TypeError(f"{where}: got both {name}= and {older}= (its older name); pass one")
        return older_value
    if required and value is None:
        raise TypeError(f"{where}: missing the argument {name}")
    return value


class OlderNames:
    """Methods only the older package's users call; the client inherits them."""

    async def wait_connected(self, timeout: float | None = None) -> Any:  # the client's, below it in the MRO
        raise NotImplementedError

    async def wait_enter_handing_ws(self) -> None:
        """Wait until a connection carries traffic: ``await wait_connected()``, by its older name.

        Raises:
            ClientClosed, RetriesExhausted, ConnectionRejected: as :meth:`wait_connected`.
        """
        await self.wait_connected()
