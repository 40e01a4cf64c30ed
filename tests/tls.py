"""A websockets server over TLS on loopback, with a self-signed certificate the tests can trust."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

# A self-signed certificate for 127.0.0.1 and localhost, valid 2000-2100 (made with openssl).
KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg7snot7O4gDUj/4IV
/jOR0Vn4OS3ES72A+fr+TDLFXEuhRANCAAQRO8V3EWvAw9IYuL2SdAJCXaNGym83
53puOBkQ3fP2rmaZ+v1h3I3tx4yrYVcoBcN0K45012pBdCXbEgeOdAGd
-----END PRIVATE KEY-----
"""
CERT = """-----BEGIN CERTIFICATE-----
MIIBaDCCAQ2gAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
c3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABBE7xXcRa8DD0hi4
vZJ0AkJdo0bKbzfnem44GRDd8/auZpn6/WHcje3HjKthVygFw3QrjnTXakF0JdsS
B450AZ2jTjBMMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAPBgNVHRMBAf8E
BTADAQH/MB0GA1UdDgQWBBTjPKNfMkRmwSx+C/27MSk1KJX4nTAKBggqhkjOPQQD
AgNJADBGAiEAj8nDBj+nUkXoxFNrQRVpTK/lClVKUpKDO6p48faRgh4CIQDoTAa6
3Rv9maRGB4pK8bmfWDsLqsN/k4JdW/TsnFS4AQ==
-----END CERTIFICATE-----
"""


def client_context() -> ssl.SSLContext:
    """An ssl context that trusts CERT."""
    return ssl.create_default_context(cadata=CERT)


async def serve_tls(directory: Path) -> AsyncIterator[str]:
    """Serve wss:// on 127.0.0.1 (greeting every client with "hello"); yield its URL."""
    (directory / "key.pem").write_text(KEY)
    (directory / "cert.pem").write_text(CERT)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")

    async def greet(conn: ServerConnection) -> None:
        await conn.send("hello")
        await conn.wait_closed()

    async with serve(greet, "127.0.0.1", 0, ssl=context) as tls:
        port = tls.sockets[0].getsockname()[1]
        yield f"wss://127.0.0.1:{port}/"
