"""Error answers exactly as Feishu's OpenAPI returns them.

Every OpenAPI answer is JSON ``{"code": int, "msg": str, ...}``; errors carry an
HTTP status that depends on the error. Each factory cites where its code comes
from; codes and statuses not found in an authoritative source say UNCONFIRMED (and
are listed in ``docs/platforms/feishu.md``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ApiError"]


class ApiError(Exception):
    """An OpenAPI error: HTTP ``status``, Feishu ``code`` and ``msg``, extra ``headers``."""

    def __init__(
        self, status: int, code: int, msg: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"code": self.code, "msg": self.msg}

    # -------------------------------------------------------------- auth
    @classmethod
    def bad_credentials(cls) -> ApiError:
        """UNCONFIRMED: code 10014 "app secret invalid" as the token API answers a wrong
        secret (seen in community reports, not in the fetched docs)."""
        return cls(400, 10014, "app secret invalid")

    @classmethod
    def missing_token(cls) -> ApiError:
        """99991661: no ``Authorization`` header (Feishu's general error-code list;
        UNCONFIRMED: the HTTP status)."""
        return cls(400, 99991661, "Missing access token for authorization")

    @classmethod
    def invalid_token(cls) -> ApiError:
        """99991663: an unknown or expired tenant token (general error-code list;
        UNCONFIRMED: the HTTP status)."""
        return cls(400, 99991663, "Invalid access token for authorization")

    @classmethod
    def no_permission(cls) -> ApiError:
        """99991672: the app lacks a permission the API needs (Feishu's general error-code
        list; the emulator's ``cardkit_refused`` answers CardKit creates with it).
        UNCONFIRMED: the HTTP status."""
        return cls(400, 99991672, "Access denied. One of the following scopes is required")

    # -------------------------------------------------------------- limits
    @classmethod
    def frequency_limit(cls, limit: int, reset: float) -> ApiError:
        """HTTP 429, 99991400, with ``x-ogw-ratelimit-limit`` and ``x-ogw-ratelimit-reset``
        (seconds to wait) headers: the app-level limit of an API (PROTOCOLS 3.9)."""
        return cls(
            429,
            99991400,
            "request trigger frequency limit",
            {
                "x-ogw-ratelimit-limit": str(limit),
                "x-ogw-ratelimit-reset": str(max(1, round(reset + 0.499))),
            },
        )

    @classmethod
    def message_frequency(cls) -> ApiError:
        """230020: the 5 QPS per chat of send/reply and the 5 QPS per message of PATCH
        (PROTOCOLS 3.8, 3.9; UNCONFIRMED: HTTP 400)."""
        return cls(400, 230020, "This operation triggers the frequency limit.")

    @classmethod
    def card_frequency(cls) -> ApiError:
        """The 10 operations/s per card entity outside streaming mode (PROTOCOLS 3.9).
        UNCONFIRMED: the code; the documented general 429/99991400 is used."""
        return cls(
            429, 99991400, "card entity trigger frequency limit", {"x-ogw-ratelimit-reset": "1"}
        )

    # -------------------------------------------------------------- messages
    @classmethod
    def bad_request(cls, msg: str) -> ApiError:
        """230001 invalid parameter (UNCONFIRMED: the code for each case)."""
        return cls(400, 230001, msg)

    @classmethod
    def lone_surrogate(cls, problem: Exception) -> ApiError:
        """A body, or a JSON string in it (``content``, a card's ``data``, ``settings``),
        holding a lone surrogate (``parse_json_strict``); ``problem`` says where.
        UNCONFIRMED: what Feishu answers to such text; 230001 as for other invalid
        parameters."""
        return cls(400, 230001, str(problem))

    @classmethod
    def message_not_found(cls) -> ApiError:
        """230002? UNCONFIRMED: the code for a message id that does not exist."""
        return cls(400, 230002, "The message does not exist.")

    @classmethod
    def withdrawn(cls) -> ApiError:
        """230011: the message was recalled (PROTOCOLS 3.8)."""
        return cls(400, 230011, "The message was withdrawn.")

    @classmethod
    def content_too_long(cls) -> ApiError:
        """230025: message content over its size limit (text 150 KB, card/post 30 KB,
        PROTOCOLS 3.8; UNCONFIRMED: the code)."""
        return cls(400, 230025, "The length of the message content reaches its limit.")

    @classmethod
    def not_updatable(cls) -> ApiError:
        """PATCH of a card sent without ``config.update_multi: true`` (PROTOCOLS 3.8).
        UNCONFIRMED: the code."""
        return cls(400, 230001, "card is not shared (update_multi is false)")

    # -------------------------------------------------------------- CardKit
    @classmethod
    def card_not_found(cls) -> ApiError:
        """200740 (PROTOCOLS 3.8)."""
        return cls(400, 200740, "card not found")

    @classmethod
    def card_sent_twice(cls) -> ApiError:
        """A card entity is sendable once (PROTOCOLS 3.8). UNCONFIRMED: the code."""
        return cls(400, 230099, "card entity has been sent")

    @classmethod
    def too_many_tables(cls) -> ApiError:
        """230099 with the card-content error 11310 in its message: a card with more
        tables than Feishu draws (the code and message as reported by Feishu robots'
        users, ANCHORS 5). UNCONFIRMED: HTTP 400, and the limit itself (the emulator's
        ``max_tables``, 5 by default; reports say 3 to 5)."""
        return cls(
            400,
            230099,
            "Failed to create card content, ext=ErrCode: 11310; ErrMsg: card table number "
            "over limit; ErrorValue: table; ",
        )

    @classmethod
    def card_too_large(cls) -> ApiError:
        """200860: card over 30 KB (PROTOCOLS 3.8)."""
        return cls(400, 200860, "card content exceeds the size limit")

    @classmethod
    def streaming_timeout(cls) -> ApiError:
        """200850: streaming mode closed itself 10 minutes after it was enabled
        (PROTOCOLS 3.8)."""
        return cls(400, 200850, "card streaming timeout")

    @classmethod
    def streaming_closed(cls) -> ApiError:
        """300309: streaming update of a card not in streaming mode (PROTOCOLS 3.8)."""
        return cls(400, 300309, "streaming mode is closed")

    @classmethod
    def sequence_not_increasing(cls) -> ApiError:
        """300317: ``sequence`` not greater than the card's last (PROTOCOLS 3.8)."""
        return cls(400, 300317, "sequence number compare failed")

    # -------------------------------------------------------------- faults
    @classmethod
    def system_busy(cls) -> ApiError:
        """A server-side failure (the ``errors`` fault). UNCONFIRMED: HTTP 500 with code
        1000040343 ("internal error" of the long-connection endpoint, PROTOCOLS 3.1)."""
        return cls(500, 1000040343, "internal error, please retry")
