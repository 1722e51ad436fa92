"""Small proxies for tests, on 127.0.0.1 port 0: an HTTP proxy (``CONNECT`` tunnels and
absolute-form requests) and a SOCKS5 proxy (RFC 1928, no-auth and username/password per
RFC 1929). Each records the targets it was asked for and relays bytes; ``resolve`` maps a
target host to where the proxy really connects (always 127.0.0.1 here), so a test can
use a name only the proxy knows. They refuse any target that would leave 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import struct
from collections.abc import Callable

import attrs

LOOPBACK = "127.0.0.1"


def _fields(lines: list[str]) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}


@attrs.frozen
class Seen:
    """One request the proxy relayed: how it came (``CONNECT``, ``forward`` for an
    absolute-form request, ``socks5``), its target, and, for plain HTTP inside, its
    method, path and whether it asked for a websocket (``None`` for TLS inside)."""

    via: str
    host: str
    port: int
    method: str | None = None
    path: str | None = None
    websocket: bool = False


class _Relay:
    def __init__(self, resolve: Callable[[str], str] | None = None) -> None:
        self.targets: list[tuple[str, str, int]] = []
        """(how, host, port) per tunnel or forwarded connection: how is CONNECT, forward,
        or socks5."""
        self.seen: list[Seen] = []
        """Every request relayed, the HTTP ones inside tunnels included."""
        self.resolve = resolve or (lambda host: host)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # every relay's reads end
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> _Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client gone, or the proxy stopping
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _open(self, host: str) -> str:
        real = self.resolve(host)
        if not ipaddress.ip_address(real).is_loopback:
            raise ConnectionRefusedError(f"the test proxy only reaches 127.0.0.1, not {real}")
        return real

    async def _pipe(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        via: str,
        host: str,
        port: int,
        prefix: bytes = b"",
    ) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        async def requests(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            """Copy HTTP/1.1 requests one by one, noting each, until a websocket upgrade,
            a chunked body or anything not plain HTTP: then copy raw bytes."""
            buf = bytearray(prefix)

            async def fill() -> None:
                data = await src.read(65536)
                if not data:
                    raise asyncio.IncompleteReadError(bytes(buf), None)
                buf.extend(data)

            async def take(n: int) -> bytes:
                while len(buf) < n:
                    await fill()
                out = bytes(buf[:n])
                del buf[:n]
                return out

            async def head() -> bytes:
                while b"\r\n\r\n" not in buf:
                    await fill()
                return await take(buf.index(b"\r\n\r\n") + 4)

            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    if not buf:
                        await fill()
                    if not chr(buf[0]).isalpha():  # TLS (0x16) or another protocol
                        self.seen.append(Seen(via, host, port))
                        break
                    block = await head()
                    lines = block.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    fields = _fields(lines[1:])
                    path = target
                    if "://" in target:
                        path = "/" + target.split("://", 1)[1].partition("/")[2]
                    upgrade = fields.get("upgrade", "").lower() == "websocket"
                    self.seen.append(Seen(via, host, port, method, path, upgrade))
                    if "://" in target:  # as proxies do: forward in origin-form
                        version = lines[0].rsplit(" ", 1)[1]
                        block = (
                            f"{method} {path} {version}".encode("latin-1") + block[len(lines[0]) :]
                        )
                    dst.write(block)
                    if upgrade or "chunked" in fields.get("transfer-encoding", ""):
                        break
                    dst.write(await take(int(fields.get("content-length", "0"))))
                    await dst.drain()
            if buf:
                dst.write(bytes(buf))
            await copy(src, dst)

        self._writers.add(upstream[1])
        try:
            await asyncio.gather(requests(client[0], upstream[1]), copy(upstream[0], client[1]))
        finally:
            self._writers.discard(upstream[1])
            upstream[1].transport.abort()


class HttpProxy(_Relay):
    """``CONNECT host:port`` tunnels and ``GET http://host:port/...`` forwarding (one
    target per client connection, as aiohttp pools proxy connections per target).
    ``credentials``: ``user:password`` the proxy demands (407 otherwise)."""

    def __init__(
        self, resolve: Callable[[str], str] | None = None, credentials: str | None = None
    ) -> None:
        super().__init__(resolve)
        self.credentials = credentials

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = _fields(lines[1:])
        if self.credentials is not None:
            wanted = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if headers.get("proxy-authorization") != wanted:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                await writer.drain()
                return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
        else:
            authority = target.split("://", 1)[1].split("/", 1)[0]
            host, _, port = authority.rpartition(":")
            host, port = (host or authority).strip("[]"), port or "80"
        via = "CONNECT" if method == "CONNECT" else "forward"
        self.targets.append((via, host, int(port)))
        try:
            upstream = await asyncio.open_connection(await self._open(host), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:  # hand the first request back to the relay, which notes each one
            kept = [
                line
                for line in lines[:-2]
                if not line.lower().startswith(("proxy-authorization:", "proxy-connection:"))
            ]
            pending = ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1")
            await self._pipe((reader, writer), upstream, via, host, int(port), pending)
            return
        await self._pipe((reader, writer), upstream, via, host, int(port))


class Socks5Proxy(_Relay):
    """SOCKS5 ``CONNECT`` to an IPv4 address, an IPv6 address or a domain name (which it
    resolves with ``resolve``). ``credentials``: ``(user, password)`` it demands."""

    def __init__(
        self,
        resolve: Callable[[str], str] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(resolve)
        self.credentials = credentials
        self.address_types: list[str] = []
        """Per request: ``ipv4``, ``ipv6`` or ``domain`` (a socks5h client's)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        assert version == 5
        if self.credentials is not None:
            if 2 not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(b"\x05\x02")
            await writer.drain()
            _, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            ok = (user, password) == self.credentials
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            await writer.drain()
            if not ok:
                return
        else:
            writer.write(b"\x05\x00")
            await writer.drain()
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
            self.address_types.append("ipv4")
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
            self.address_types.append("ipv6")
        else:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
            self.address_types.append("domain")
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        self.targets.append(("socks5", host, port))
        if command != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))
            return
        try:
            upstream = await asyncio.open_connection(await self._open(host), port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))
            await writer.drain()
            return
        writer.write(b"\x05\x00\x00\x01" + bytes(4) + struct.pack("!H", 0))
        await writer.drain()
        await self._pipe((reader, writer), upstream, "socks5", host, port)
