"""A second server on 127.0.0.1 that a redirect points at: it records every request that
reaches it, so a test can assert that none did (no redirect followed)."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web


class RedirectTarget:
    """``async with RedirectTarget() as other``: ``other.url`` to redirect to,
    ``other.hits`` the ``METHOD path`` of each request that arrived."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(f"{request.method} {request.path}")
        return web.json_response({"errcode": 0, "errmsg": "ok", "code": 0})

    async def __aenter__(self) -> RedirectTarget:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Redirector(RedirectTarget):
    """A server that answers every request with ``307`` to ``location``."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(f"{request.method} {request.path}")
        raise web.HTTPTemporaryRedirect(self.location + request.path_qs)
