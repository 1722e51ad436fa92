"""Error bodies exactly as DingTalk returns them.

New-style OpenAPI errors (``api.dingtalk.com``) are
``{"code": "...", "message": "...", "requestid": "..."}`` with an HTTP status
that depends on the error (PROTOCOLS 2.2). The sessionWebhook (an ``oapi`` style
endpoint) answers HTTP 200 with ``{"errcode": n, "errmsg": "..."}``.

Each factory cites where its code and message come from. Anything not found in
an authoritative source is marked ``# GUESS:`` and listed in
``docs/platforms/dingtalk-emulator.md``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An OpenAPI error answered as ``{"code", "message", "requestid"}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body DingTalk sends for this error."""
        body: dict[str, Any] = {
            "code": self.code,
            "requestid": request_id,
            "message": self.message,
        }
        body.update(self.extra)
        return body


# --- authentication -----------------------------------------------------------


def auth_failed() -> ApiError:
    """``POST /v1.0/gateway/connections/open`` with a wrong clientId/clientSecret.

    Seen verbatim in zfanswer/dify-on-dingtalk#28 (HTTP 401).
    """
    return ApiError(401, "authFailed", "鉴权失败")


def invalid_client() -> ApiError:
    """``POST /v1.0/oauth2/accessToken`` with a wrong appKey/appSecret (400, documented)."""
    return ApiError(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")


def invalid_token(status: int = 401) -> ApiError:
    """Missing, unknown or expired ``x-acs-dingtalk-access-token``.

    The code and message are verbatim from satorijs/satori#240.
    """
    # GUESS: the status. The brief asks for 401; the only captured real answer
    # (satorijs/satori#240) was HTTP 400. Configurable via invalid_token_status.
    return ApiError(status, "InvalidAuthentication", "不合法的access_token")


def missing_body() -> ApiError:
    """A body that is absent or not JSON (aliyun/alibabacloud-php-sdk#36)."""
    return ApiError(400, "Missingbody", "body is mandatory for this action.")


def api_not_found() -> ApiError:
    """A ``/v1.0/...`` path the emulator (or DingTalk) does not know."""
    # GUESS: the Alibaba Cloud API-gateway style answer for an unknown action.
    return ApiError(
        404,
        "InvalidAction.NotFound",
        "Specified api is not found, please check your url and method.",
    )


def lone_surrogate(problem: Exception) -> ApiError:
    """A body (or a JSON string in it: ``cardData``, ``msgParam``) holding a lone surrogate
    (``parse_json_strict``); ``problem`` says where."""
    # GUESS: DingTalk's answer to text with a lone surrogate is not documented (its Java
    # servers may even take it); the emulator refuses it as a malformed parameter, with
    # the code it uses for the robot APIs' other malformed requests.
    return ApiError(400, "invalidParameter", str(problem))


def json_kind(value: Any) -> str:
    """The JSON type of a parsed JSON ``value``: ``string``, ``boolean``, ``number``,
    ``object``, ``array`` or ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def wrong_types(code: str, fields: list[tuple[str, str, Any]], *, prefix: str = "") -> ApiError:
    """Body fields of the wrong JSON type, each ``(field, expected, value)``: 400 ``code``
    (the code the route answers its other bad parameters with) and a message naming each
    field, e.g. ``isFinalize must be a boolean, not string``; ``prefix`` goes before it
    (the StandardCard routes' 参数无效)."""
    # GUESS (UNCONFIRMED): DingTalk documents no answer for a field of the wrong type
    # (PROTOCOLS 2.3-2.5 list none); the code is the one each route family uses for its
    # other bad parameters, the message is the emulator's own.
    said = "; ".join(f"{f} must be {expected}, not {json_kind(v)}" for f, expected, v in fields)
    return ApiError(400, code, prefix + said)


# --- throttling and server faults ---------------------------------------------


def qps_limited() -> ApiError:
    """Per-app per-API QPS exceeded: HTTP 403 (server-api-error-codes, PROTOCOLS 2.2)."""
    # GUESS: the message text; only the status and code are documented.
    return ApiError(
        403,
        "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
        "应用调用该接口的请求数超过限流阈值，请降低调用频率。",
    )


def system_busy() -> ApiError:
    """Injected 5xx fault: ``500 system.busy 系统繁忙`` (createAndDeliver error table)."""
    return ApiError(500, "system.busy", "系统繁忙")


def permission_denied(scope: str) -> ApiError:
    """The app lacks a permission the API needs: 403 with ``accessdenieddetail``.

    Body shape verbatim from open-dingtalk/dingtalk-stream-sdk-python#20 (a
    ``PUT /v1.0/card/streaming`` without ``Card.Streaming.Write``); the message
    there was elided ("...<url>"), so its leading words are a GUESS.
    """
    return ApiError(
        403,
        "Forbidden.AccessDenied.AccessTokenPermissionDenied",
        "没有调用该接口的权限，接口权限申请参考："
        "https://open.dingtalk.com/document/orgapp-server/add-api-permission",
        extra={"accessdenieddetail": {"requiredScopes": [scope]}},
    )


# --- card instances (create / deliver / createAndDeliver / update) ------------
# Code and message are identical in DingTalk's tables (create-and-deliver-cards).


def card_param(code: str) -> ApiError:
    """``400 param.*`` with message equal to the code, e.g. ``param.cardAlreadyExist``."""
    return ApiError(400, code, code)


# --- AI card streaming (api-streamingupdate error table, verbatim) ------------


def stream_key_empty() -> ApiError:
    return ApiError(400, "param.stream.keyEmpty", "param.stream.keyEmpty")


def stream_content_empty() -> ApiError:
    return ApiError(400, "param.stream.contentEmpty", "param.stream.contentEmpty")


def stream_guid_empty() -> ApiError:
    return ApiError(400, "param.stream.guidEmpty", "param.stream.guidEmpty")


def stream_card_not_exist() -> ApiError:
    return ApiError(400, "param.stream.outTrackId", "card is not exist")


def stream_is_full_null() -> ApiError:
    return ApiError(400, "param.stream.isFull", "streaming update the parameter isFull is null")


def stream_content_too_large() -> ApiError:
    return ApiError(400, "param.stream.content", "content is too large")


# --- StandardCard (robots-send-interactive-cards error table, verbatim) -------


def standard_param_error() -> ApiError:
    return ApiError(400, "param.error", "参数无效")


def standard_not_json() -> ApiError:
    return ApiError(400, "param.isNotJson", "参数必须是json")


def standard_invalid_robot_code() -> ApiError:
    return ApiError(400, "invalid.robotCode", "无效的机器人标识")


def standard_card_too_large(limit: int) -> ApiError:
    # GUESS: DingTalk documents no size limit for a StandardCard's cardData, nor an
    # error for it; the emulator refuses cardData over ``card_data_limit`` bytes so
    # that plugins meet a card size error at all.
    return ApiError(400, "param.error", f"参数无效: cardData exceeds {limit} bytes")


def standard_card_not_exist() -> ApiError:
    # GUESS: which of invalid.bizId / cardInstance.notExist an unknown bizId
    # gets on update; both are listed for the StandardCard APIs.
    return ApiError(400, "cardInstance.notExist", "互动卡片实例不存在")


# --- robot message send (oToMessages/batchSend, groupMessages/send) -----------


def robot_param_error(detail: str) -> ApiError:
    # GUESS: code for a malformed robot send request; DingTalk's tables for
    # these APIs were not available.
    return ApiError(400, "invalidParameter", detail)


def robot_msg_param_too_long(limit: int) -> ApiError:
    # GUESS: the code; the limit (msgParam at most 15,000 bytes) is documented for
    # groupMessages/send (PROTOCOLS 2.6).
    return ApiError(400, "invalidParameter", f"msgParam exceeds {limit} bytes")


def robot_media_not_exist() -> ApiError:
    # GUESS: a sampleImageMsg/sampleFile whose media id this app never uploaded.
    return ApiError(400, "invalidParameter", "mediaId is invalid")


def download_code_invalid() -> ApiError:
    # GUESS: messageFiles/download with an unknown or another app's downloadCode.
    return ApiError(400, "invalidParameter", "downloadCode is invalid")


def robot_not_exist() -> ApiError:
    # GUESS: code and message for a robotCode that is not this app's robot.
    return ApiError(400, "resource.not.found", "robot 不存在")


# --- stream connections -------------------------------------------------------


def too_many_connections(limit: int) -> ApiError:
    # GUESS: DingTalk's answer when an app already has its maximum number of
    # stream connections (50, PROTOCOLS 1.8) is not documented.
    return ApiError(
        403,
        "Forbidden.ConnectionLimit",
        f"too many connections for this app (limit {limit})",
    )


def invalid_ticket() -> ApiError:
    # GUESS: the handshake answer for an unknown, used or expired ticket.
    return ApiError(401, "invalidTicket", "ticket is invalid or expired")


# --- sessionWebhook (oapi style, HTTP 200) ------------------------------------

WEBHOOK_OK: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}
"""Successful sessionWebhook post."""

WEBHOOK_SESSION_EXPIRED: dict[str, Any] = {"errcode": 300001, "errmsg": "session 不存在"}
"""Expired or unknown session (agentscope-ai/QwenPaw#2221)."""

WEBHOOK_TOO_LONG: dict[str, Any] = {
    "errcode": 460101,
    "errmsg": "message too long, exceed 20000 bytes",
}
"""Body over 20000 bytes (timonwong/prometheus-webhook-dingtalk#30, webhook robots)."""

# --- old-style oapi (media/upload), HTTP 200 with errcode ---------------------
# The codes are DingTalk's global server error codes of the old API (40014 invalid
# token; 40004 media type, 40005 file type, 40006 file size). GUESS: not in
# PROTOCOLS; recalled from DingTalk's old error-code table, which WeChat shares.

OAPI_INVALID_TOKEN: dict[str, Any] = {"errcode": 40014, "errmsg": "不合法的access_token"}
OAPI_BAD_MEDIA_TYPE: dict[str, Any] = {"errcode": 40004, "errmsg": "不合法的媒体文件类型"}
OAPI_NO_MEDIA: dict[str, Any] = {"errcode": 40005, "errmsg": "不合法的文件类型"}
OAPI_MEDIA_TOO_LARGE: dict[str, Any] = {"errcode": 40006, "errmsg": "不合法的文件大小"}

# GUESS: answer for a webhook body that is not JSON or lacks a known msgtype.
WEBHOOK_BAD_BODY: dict[str, Any] = {"errcode": 40035, "errmsg": "缺少参数 json"}


def webhook_lone_surrogate(problem: Exception) -> dict[str, Any]:
    """A sessionWebhook body holding a lone surrogate (``parse_json_strict``): HTTP 200 and
    errcode 40035, as the route answers its other bad bodies."""
    # GUESS: what DingTalk answers to such text is not documented.
    return {"errcode": 40035, "errmsg": f"不合法的参数: {problem}"}
