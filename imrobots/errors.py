"""Exceptions raised by imrobots and by platform plugins.

Platform plugins translate their wire errors into these classes so that the
core can decide what to do (wait and retry, send a new message, give up)
without knowing any platform's error codes.
"""

from __future__ import annotations

__all__ = [
    "CardGone",
    "ConfigError",
    "FatalPlatformError",
    "ImrobotsError",
    "NotSupported",
    "OutcomeUnknown",
    "PlatformError",
    "PlatformUnavailable",
    "PluginError",
    "RateLimited",
    "Refused",
    "RetryableError",
    "UserCodeExit",
    "classified",
]


class ImrobotsError(Exception):
    """Base class of every error imrobots raises on purpose."""


class ConfigError(ImrobotsError):
    """A configuration file or setting is wrong. The message is one line naming the problem."""


class UserCodeExit(ImrobotsError):
    """An agent or handler raised :class:`SystemExit` (``sys.exit()``, an ``argparse``
    error): it ends that answer in an error card, as any other exception does, instead of
    stopping the process with every robot in it and leaving its cards "thinking"."""

    def __init__(self, exit: SystemExit) -> None:
        super().__init__(f"user code raised SystemExit({exit.code!r})")
        self.code = exit.code


class PluginError(ImrobotsError):
    """A plugin could not be loaded, or two plugins registered the same name."""


class PlatformUnavailable(ImrobotsError):
    """A platform is registered but its SDK is not installed; the message says what to install."""


class NotSupported(ImrobotsError):
    """The platform (or this connection's mode) has no such feature, e.g. sending a file
    where only text can be sent. Its capabilities say so in advance."""


class PlatformError(ImrobotsError):
    """A platform API call failed.

    ``code`` is the platform's own error code (a string, for logs), ``status``
    the HTTP status if there was one.
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class RetryableError(PlatformError):
    """A transient failure (5xx, network error, busy): the same call may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class OutcomeUnknown(RetryableError):
    """The request was sent but no answer came (a time-out or a dropped connection after
    the request left): the platform may or may not have acted.

    The core retries it only with the same idempotency key, and only for operations
    the platform declares idempotent (``Capabilities.idempotent``); otherwise it
    assumes the call took effect rather than risk a duplicate.
    """


class RateLimited(RetryableError):
    """The platform refused the call because a rate limit was hit.

    ``retry_after`` is the platform's hint in seconds, when it gave one.
    """


class FatalPlatformError(PlatformError):
    """A failure that retrying will not fix (bad credentials, bad request, no permission)."""


class CardGone(FatalPlatformError):
    """The card or message to update no longer exists or can no longer be edited.

    The streaming engine answers this by sending a new message with the content.
    """


class Refused(FatalPlatformError):
    """The platform refuses this way of delivering (no permission for cards, no card to a
    user it cannot address...). The core degrades: streaming card, then card, then a
    markdown/text message. ``app_wide`` says the refusal holds for every conversation
    (a missing permission), so later answers skip cards for a while.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        app_wide: bool = False,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.app_wide = app_wide


def classified(exc: BaseException) -> str | None:
    """One line describing ``exc`` if a plugin classified it (a :class:`PlatformError` or
    :class:`NotSupported`): its message, with the platform's code and the HTTP status
    when the message does not already say them. ``None`` for any other exception, which
    is unexpected and is logged with its traceback. The line is for logs: plugins keep
    secrets out of their error messages."""
    if not isinstance(exc, PlatformError | NotSupported):
        return None
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PlatformError):
        if exc.code and exc.code not in text:
            text += f" (code {exc.code})"
        elif exc.status and str(exc.status) not in text:
            text += f" (HTTP {exc.status})"
    return text
