"""What the benchmark scripts share: the client under test, figures, and the machine."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import websockets

# Run from a checkout without installing: the package is one directory up. BENCH_PACKAGE_PATH
# names another checkout's root instead (throughput.py --compare measures two side by side).
sys.path.insert(0, os.environ.get("BENCH_PACKAGE_PATH") or str(Path(__file__).resolve().parent.parent))

from async_ws_stream import AsyncWsStream  # noqa: E402

loads = orjson.loads


class BenchClient(AsyncWsStream[Any]):
    """The client as the README's quick start writes it: plain ``websockets.connect``, orjson in a ``def``.

    ``commands`` go out on every new connection from ``_on_connect`` (a subscription).
    ``ssl`` is passed to ``websockets.connect`` for a ``wss://`` url.
    """

    ssl: ssl.SSLContext | None = None

    def __init__(self, url: str, *, commands: Sequence[Any] = (), recycle_every: float | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.commands = list(commands)
        self.recycle_every = recycle_every

    async def _create_ws(self) -> Any:
        if self.ssl is not None:
            return await websockets.connect(self.url, ssl=self.ssl)
        return await websockets.connect(self.url)

    async def _when2create_new_ws(self) -> None:
        if self.recycle_every is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(self.recycle_every)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return loads(raw)

    async def _on_connect(self, ws: Any) -> None:
        for command in self.commands:
            await ws.send(orjson.dumps(command).decode())


def spread(values: Sequence[float]) -> str:
    """``median [min-max]`` of rates, in thousands."""
    med = statistics.median(values)
    return f"{med / 1000:,.1f}k [{min(values) / 1000:,.1f}-{max(values) / 1000:,.1f}k]"


def machine() -> str:
    """One line naming what the figures were measured on."""
    return (
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"websockets {websockets.__version__}, orjson {orjson.__version__}, {platform.system()} "
        f"{platform.release()}"
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th quantile (0 to 1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def load_average() -> str:
    """The 1-minute load average: how busy the machine was (other work makes figures noisy)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def make_certificate(directory: Path) -> tuple[str, str, str]:
    """A self-signed certificate for 127.0.0.1 in directory: (cert file, key file, how it was made).

    The ``openssl`` command line when there is one, else the ``cryptography`` package.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is not None:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )
        return str(cert), str(key), "openssl"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise RuntimeError("a wss:// row needs the openssl command or the cryptography package") from None
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(cert), str(key), "cryptography"


def client_ssl(cert: str) -> ssl.SSLContext:
    """A client context that trusts exactly the bench's self-signed certificate."""
    return ssl.create_default_context(cafile=cert)
