"""No redirects on calls to platform hosts.

Calls to a platform carry credentials (an access token in a header or the query string,
a sessionWebhook's session, a connection ticket). A redirect answered by a platform host,
or by something posing as one, would take them, and the call itself, to another host.
Plugins therefore follow no redirect: each call passes ``allow_redirects=False`` and
treats a 3xx answer as an error, and the ``aiohttp.ClientSession`` of their long
connection gets :func:`refuse_redirects`, which stops the calls that cannot pass it (a
WebSocket upgrade: ``ws_connect`` always follows redirects) with :class:`RedirectRefused`
before the next request leaves. A session for API calls only goes without it: a trace
config makes aiohttp send about eight trace signals on every request.
"""

from __future__ import annotations

import logging
import types

import aiohttp
from yarl import URL

__all__ = ["RedirectRefused", "redirect_message", "refuse_redirects"]

log = logging.getLogger("imrobots.redirects")


class RedirectRefused(aiohttp.ClientError):
    """A platform host answered a redirect (3xx), which is not followed."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def redirect_message(what: str, status: int, location: str | None) -> str:
    """One line naming the call, the status and the host redirected to (never the path
    or query, which may carry a credential)."""
    try:
        target = URL(location).host if location else None
    except ValueError:
        target = None
    where = f" to {target}" if target else ""
    return f"{what} answered a redirect ({status}{where}); redirects are not followed"


def refuse_redirects() -> aiohttp.TraceConfig:
    """A trace config for a plugin's session: a redirect raises :class:`RedirectRefused`
    (logged at WARNING) instead of being followed."""

    async def on_redirect(
        session: aiohttp.ClientSession,
        context: types.SimpleNamespace,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        what = f"{params.method} {params.url.host}"
        message = redirect_message(
            what, params.response.status, params.response.headers.get("Location")
        )
        log.warning("%s", message)
        raise RedirectRefused(message, status=params.response.status)

    config = aiohttp.TraceConfig()
    config.on_request_redirect.append(on_redirect)
    return config
