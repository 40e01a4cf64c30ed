"""``python -m async_ws_stream``: argument parsing and dispatch.

The work is done elsewhere: ``connect`` in :mod:`async_ws_stream._cli`, ``demo``
in :mod:`async_ws_stream._demo`. Bad arguments exit 2 with a message naming the
argument (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from ._cli import ConnectOptions, parse_json_object, run_connect
from ._demo import DEFAULT_FAULT_EVERY, run_demo
from ._redact import redact

__all__ = ["build_parser", "main"]

PROG = "python -m async_ws_stream"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, and return its exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "connect":
        return run_connect(ConnectOptions(
            url=args.url,
            filters=args.filter,
            sends=args.send,
            count=args.count,
            idle_timeout=args.idle_timeout,
            recycle_every=args.recycle_every,
            headers=args.header,
            max_retries=args.max_retries,
            stats=args.stats,
            verbose=args.verbose,
            quiet=args.quiet,
        ))
    return run_demo(seconds=args.seconds, fault_every=args.fault_every)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of both commands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One websocket connection, any number of filtered streams, kept alive.",
    )
    parser.add_argument("--version", action="version", version=f"async_ws_stream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    connect = commands.add_parser(
        "connect",
        help="print a websocket feed's matching messages as JSON lines, reconnecting as needed",
        description=(
            "Connect to URL and print every matching message to stdout, one JSON document a line, "
            "flushed (pipe it into jq). Reconnects with backoff when the connection is lost. "
            "Logs (-v), errors and --stats go to stderr. Exit codes: 0 after --count messages or when "
            "stdout's reader goes away, 1 when the client gives up, 2 for a bad argument, 130 on Ctrl-C."
        ),
    )
    connect.add_argument("url", metavar="URL", type=_ws_url, help="ws:// or wss:// address of the feed")
    connect.add_argument(
        "--filter", action="append", default=[], metavar="JSON", type=_json_object,
        help="print only messages whose fields equal this JSON object's; repeat to OR several",
    )
    connect.add_argument(
        "--send", action="append", default=[], metavar="JSON", type=_json_text,
        help="send this JSON document on every new connection (subscribe, log in); repeatable, in order",
    )
    connect.add_argument("--count", type=_number(int, minimum=1), metavar="N",
                         help="exit 0 after printing N messages")
    connect.add_argument("--idle-timeout", type=_number(float, minimum=0, strict=True),
                         metavar="S", help="reconnect when no frame arrived for S seconds")
    connect.add_argument("--recycle-every", type=_number(float, minimum=0, strict=True),
                         metavar="S", help="replace the connection every S seconds, make-before-break")
    connect.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", type=_header,
                         help="extra HTTP header of the handshake; repeatable")
    connect.add_argument("--max-retries", type=_number(int, minimum=0), metavar="N",
                         help="give up (exit 1) after N consecutive failed attempts (default: retry forever)")
    connect.add_argument("--stats", action="store_true", help="print the client's counters on stderr at exit")
    connect.add_argument("-v", "--verbose", action="count", default=0,
                         help="log connections and retries on stderr (-vv: debug)")
    connect.add_argument("-q", "--quiet", action="store_true",
                         help="do not print connection events (connected, lost, retry) on stderr")

    demo = commands.add_parser(
        "demo",
        help="a live multi-stream demo against an embedded feed, with injected faults; no network needed",
        description=(
            "Start a loopback FeedServer publishing synthetic trades and book updates, consume it "
            "with several filtered streams and a handler, and inject a fault every few seconds "
            "(abrupt drop, stall, recycle, garbage frames). Runs until Ctrl-C or for --seconds, then exits 0."
        ),
    )
    demo.add_argument("--seconds", type=_number(float, minimum=0, strict=True), metavar="N",
                      help="stop after N seconds (default: run until Ctrl-C)")
    demo.add_argument("--fault-every", type=_number(float, minimum=0, strict=True),
                      default=DEFAULT_FAULT_EVERY, metavar="S",
                      help=f"inject the next fault every S seconds (default: {DEFAULT_FAULT_EVERY:g})")
    return parser


# Converters: each raises ArgumentTypeError, which argparse reports as
# "argument --filter: <message>" and exit status 2.

def _json_object(text: str) -> dict[str, Any]:
    try:
        return parse_json_object(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_text(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        # Not echoed: --send documents (a login, an auth message) often carry credentials.
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc}); check the shell's quoting (the text is not shown: it may hold a secret)"
        ) from None
    return text  # sent as given: the user's spelling of numbers and keys is kept


def _number(kind: type[int] | type[float], *, minimum: float, strict: bool = False) -> Callable[[str], Any]:
    what = "an integer" if kind is int else "a number"
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    return convert


def _ws_url(text: str) -> str:
    if not text.lower().startswith(("ws://", "wss://")):
        # Shown without its userinfo, path and query, where passwords, keys and tokens live.
        shown = redact(text) if "://" in text else re.split(r"[/?#@\s]", text, maxsplit=1)[0] + "…"
        raise argparse.ArgumentTypeError(f"expected a ws:// or wss:// address, got {shown!r}")
    return text


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        # Never echoed: a header's value is often a credential (Authorization, X-MBX-APIKEY).
        raise argparse.ArgumentTypeError(
            f"expected NAME:VALUE, such as 'Authorization: Bearer x', got {len(text)} characters "
            f"{'with no' if not sep else 'with a bad name before the'} ':' (not shown: it may hold a secret)"
        )
    return name, value.strip()


if __name__ == "__main__":
    raise SystemExit(main())
