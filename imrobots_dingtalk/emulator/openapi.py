"""OpenAPI business logic: what each route does to the emulator state.

Handlers here are plain functions ``(ctx) -> response body``; they raise
:class:`~.errors.ApiError` for DingTalk errors. Authentication, QPS limits,
fault injection and call recording happen in :mod:`.server` before and after.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from imrobots.platform import LoneSurrogate, parse_json_strict

from . import errors
from .frames import conversation_id, new_b64
from .render import refresh_view
from .state import (
    CardRecord,
    CardUpdate,
    ConversationType,
    EmulatedApp,
    EmulatorState,
    MediaRecord,
    SentMessage,
)

if TYPE_CHECKING:
    from .emulator import DingTalkEmulator


@dataclass(kw_only=True)
class OpenApiContext:
    """What a route handler gets: the emulator, the calling app and the JSON body."""

    emulator: DingTalkEmulator
    app: EmulatedApp
    body: dict[str, Any]
    route: str
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> EmulatorState:
        return self.emulator.state


logger = logging.getLogger(__name__)

OpenApiHandler = Callable[[OpenApiContext], dict[str, Any]]

KNOWN_SPACE_TYPES = frozenset({"IM_GROUP", "IM_ROBOT", "IM_SINGLE", "ONE_BOX", "IM"})


# --- helpers ------------------------------------------------------------------


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _json_str(value: Any, where: str) -> Any:
    """Parse the JSON string ``value`` (the body's field ``where``); returns ``_INVALID`` if
    it is not one. Raises :class:`ApiError` ``invalidParameter`` for one holding a lone
    surrogate (``parse_json_strict``)."""
    if not isinstance(value, str):
        return _INVALID
    try:
        return parse_json_strict(value, where=where)
    except LoneSurrogate as exc:
        logger.warning("refused an OpenAPI call: %s", exc)
        raise errors.lone_surrogate(exc) from None
    except ValueError:
        return _INVALID


_INVALID = object()

STRING, BOOLEAN, INTEGER, OBJECT, ARRAY = (
    "a string",
    "a boolean",
    "an integer",
    "an object",
    "an array",
)
"""What a body field must be (a JSON type), as :func:`_check_types` names it."""


def _is(value: Any, expected: str) -> bool:
    if expected == STRING:
        return isinstance(value, str)
    if expected == BOOLEAN:
        return isinstance(value, bool)
    if expected == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == OBJECT:
        return isinstance(value, dict)
    return isinstance(value, list)


def _check_types(
    body: Any, fields: dict[str, str], code: str, *, where: str = "", prefix: str = ""
) -> None:
    """Refuse the fields of ``body`` (an object, else nothing is checked) whose JSON type
    is not the one ``fields`` gives them: 400 ``code`` naming each (``where.field``).
    An absent field, or ``null``, is left to the route's own checks (required, empty)."""
    if not isinstance(body, dict):
        return
    wrong = [
        (f"{where}.{name}" if where else name, expected, value)
        for name, expected in fields.items()
        if (value := body.get(name)) is not None and not _is(value, expected)
    ]
    if wrong:
        raise errors.wrong_types(code, wrong, prefix=prefix)


# The types of the card routes' body fields [DT-doc robots-send-interactive-cards,
# update-the-robot-to-send-interactive-cards, interface-for-creating-a-card-instance,
# delivery-card-interface, interactive-card-update-interface, api-streamingupdate]
# (PROTOCOLS 2.3-2.5): a value of another type gets 400, not a guess at what it meant
# (the string "no" is not false; a key ["k"] is not empty).

STANDARD_SEND_FIELDS = {
    "cardTemplateId": STRING,
    "cardBizId": STRING,
    "robotCode": STRING,
    "cardData": STRING,
    "openConversationId": STRING,
    "singleChatReceiver": STRING,
    "callbackUrl": STRING,
    "userIdPrivateDataMap": STRING,
    "unionIdPrivateDataMap": STRING,
    "sendOptions": OBJECT,
}
STANDARD_SEND_OPTIONS = {
    "atUserListJson": STRING,
    "atAll": BOOLEAN,
    "receiverListJson": STRING,
    "cardPropertyJson": STRING,
}
STANDARD_UPDATE_FIELDS = {
    "cardBizId": STRING,
    "cardData": STRING,
    "userIdPrivateDataMap": STRING,
    "unionIdPrivateDataMap": STRING,
    "updateOptions": OBJECT,
}
UPDATE_OPTIONS = {"updateCardDataByKey": BOOLEAN, "updatePrivateDataByKey": BOOLEAN}
INSTANCE_FIELDS = {
    "outTrackId": STRING,
    "cardTemplateId": STRING,
    "cardData": OBJECT,
    "callbackType": STRING,
    "callbackRouteKey": STRING,
    "privateData": OBJECT,
    "cardAtUserIds": ARRAY,
    "userIdType": INTEGER,
    "openDynamicDataConfig": OBJECT,
    "imGroupOpenSpaceModel": OBJECT,
    "imRobotOpenSpaceModel": OBJECT,
    "imSingleOpenSpaceModel": OBJECT,
    "topOpenSpaceModel": OBJECT,
}
DELIVER_FIELDS = {
    "outTrackId": STRING,
    "openSpaceId": STRING,
    "userIdType": INTEGER,
    "imGroupOpenDeliverModel": OBJECT,
    "imRobotOpenDeliverModel": OBJECT,
    "topOpenDeliverModel": OBJECT,
}
GROUP_DELIVER_MODEL = {
    "robotCode": STRING,
    "atUserIds": OBJECT,
    "recipients": ARRAY,
    "extension": OBJECT,
}
ROBOT_DELIVER_MODEL = {"spaceType": STRING, "robotCode": STRING, "extension": OBJECT}
INSTANCE_UPDATE_FIELDS = {
    "outTrackId": STRING,
    "cardData": OBJECT,
    "privateData": OBJECT,
    "cardUpdateOptions": OBJECT,
    "userIdType": INTEGER,
}
STREAMING_FIELDS = {
    "outTrackId": STRING,
    "guid": STRING,
    "key": STRING,
    "content": STRING,
    "isFull": BOOLEAN,
    "isFinalize": BOOLEAN,
    "isError": BOOLEAN,
}

_STANDARD = {"code": "param.error", "prefix": "参数无效: "}
"""How the StandardCard routes name a wrong type: their documented bad-parameter answer."""


def _param_map(value: Any, notes: list[str], where: str) -> dict[str, str]:
    """A ``cardParamMap``: string values only (DingTalk: Map<String, String>)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.wrong_types("param.invalid", [(where, OBJECT, value)])
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, str):
            out[str(key)] = item
        elif isinstance(item, bool):
            out[str(key)] = "true" if item else "false"
            notes.append(f"{where}.{key}: boolean coerced to string")
        elif isinstance(item, int | float):
            out[str(key)] = json.dumps(item)
            notes.append(f"{where}.{key}: number coerced to string")
        elif item is None:
            notes.append(f"{where}.{key}: null value ignored")
        else:
            # GUESS: DingTalk rejects objects/arrays in a Map<String, String>
            # (the docs require stringified JSON); the exact code is unconfirmed.
            notes.append(f"{where}.{key}: {type(item).__name__} is not a string")
            raise errors.wrong_types("param.invalid", [(f"{where}.{key}", STRING, item)])
    return out


def _private_data(value: Any, notes: list[str], where: str) -> dict[str, dict[str, str]]:
    """``privateData``: ``{userId: {"cardParamMap": {...}}}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.wrong_types("param.invalid", [(where, OBJECT, value)])
    out: dict[str, dict[str, str]] = {}
    for user, data in value.items():
        if not isinstance(data, dict):
            raise errors.wrong_types("param.invalid", [(f"{where}.{user}", OBJECT, data)])
        out[str(user)] = _param_map(data.get("cardParamMap"), notes, f"{where}.{user}.cardParamMap")
    return out


def _merge_private(card: CardRecord, private: dict[str, dict[str, Any]], by_key: bool) -> None:
    for user, values in private.items():
        if by_key and user in card.private_data:
            card.private_data[user].update(values)
        else:
            card.private_data[user] = dict(values)


def _snapshot(ctx: OpenApiContext, card: CardRecord, route: str | None = None) -> None:
    """Record a card change made by an OpenAPI call and notify listeners."""
    record_card_change(ctx.state, card, route or ctx.route)


def record_card_change(state: EmulatorState, card: CardRecord, route: str) -> None:
    """Record a change of ``card`` (its view refreshed, a copy of its content kept as a
    version) made by ``route``, and notify listeners."""
    card.updated_at = time.monotonic()
    refresh_view(card)
    card.updates.append(CardUpdate(route=route, content=_copy_json(card.content)))
    state.emit("card", card, route=route)


def _copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists and scalars, as a parsed body holds):
    ``copy.deepcopy``'s result without its memo, in about a third of its time (every
    version of a card is kept; copying it was a tenth of a card update's handling)."""
    kind = type(value)
    if kind is dict:
        return {
            key: _copy_json(item) if type(item) in _NESTED else item for key, item in value.items()
        }
    if kind is list:
        return [_copy_json(item) if type(item) in _NESTED else item for item in value]
    return value


_NESTED = frozenset({dict, list})


def _own_card(ctx: OpenApiContext, card_id: Any, kind: str) -> CardRecord | None:
    if not isinstance(card_id, str):
        return None
    card = ctx.state.cards.get(card_id)
    if card is None or card.kind != kind or card.client_id != ctx.app.client_id:
        return None
    return card


def apply_card_flags(card: CardRecord) -> None:
    """Derive ``flow_status``/``finalized``/``error`` from ``cardParamMap["flowStatus"]``."""
    status = card.content.get("flowStatus")
    if isinstance(status, str):
        card.flow_status = status
        # SDK AICardStatus: 3 finished, 5 failed.
        if status == "3":
            card.finalized = True
        elif status == "5":
            card.error = True


def apply_callback_response(
    card: CardRecord, user_id: str, response: Any, notes: list[str]
) -> bool:
    """Apply a card callback ACK's ``data.response`` to an instance card.

    Returns True if anything changed.
    """
    if not isinstance(response, dict):
        return False
    options = response.get("cardUpdateOptions") or {}
    if not isinstance(options, dict):
        options = {}
    changed = False
    card_data = response.get("cardData")
    if isinstance(card_data, dict) and card_data.get("cardParamMap") is not None:
        values = _param_map(card_data.get("cardParamMap"), notes, "response.cardData")
        if options.get("updateCardDataByKey"):
            card.content.update(values)
        else:
            card.content = values
        changed = True
    private = response.get("userPrivateData")
    if isinstance(private, dict) and private.get("cardParamMap") is not None:
        values = _param_map(private.get("cardParamMap"), notes, "response.userPrivateData")
        _merge_private(card, {user_id: values}, bool(options.get("updatePrivateDataByKey")))
        changed = True
    if changed:
        apply_card_flags(card)
    return changed


# --- StandardCard -------------------------------------------------------------


def _at_user_ids(send_options: dict[str, Any]) -> list[str]:
    parsed = _json_str(send_options.get("atUserListJson"), "sendOptions.atUserListJson")
    if parsed is _INVALID or not isinstance(parsed, list):
        return []
    out: list[str] = []
    for item in parsed:
        if isinstance(item, dict):
            uid = item.get("userId") or item.get("unionId")
            if isinstance(uid, str):
                out.append(uid)
    return out


def _check_card_data_size(ctx: OpenApiContext, raw_card: Any) -> None:
    limit = ctx.emulator.card_data_limit
    if isinstance(raw_card, str) and len(raw_card.encode("utf-8")) > limit:
        raise errors.standard_card_too_large(limit)


def interactive_cards_send(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/im/v1.0/robot/interactiveCards/send`` (StandardCard)."""
    body, app = ctx.body, ctx.app
    _check_types(body, STANDARD_SEND_FIELDS, **_STANDARD)
    _check_types(body.get("sendOptions"), STANDARD_SEND_OPTIONS, where="sendOptions", **_STANDARD)
    template = body.get("cardTemplateId")
    biz_id = body.get("cardBizId")
    robot_code = body.get("robotCode")
    raw_card = body.get("cardData")
    if not (
        _nonempty_str(template)
        and _nonempty_str(biz_id)
        and _nonempty_str(robot_code)
        and _nonempty_str(raw_card)
    ):
        raise errors.standard_param_error()
    assert isinstance(biz_id, str) and isinstance(template, str)
    if len(biz_id) > 100:
        raise errors.standard_param_error()
    if robot_code != app.robot_code:
        raise errors.standard_invalid_robot_code()
    card_data = _json_str(raw_card, "cardData")
    if card_data is _INVALID or not isinstance(card_data, dict):
        raise errors.standard_not_json()
    _check_card_data_size(ctx, raw_card)
    open_cid = body.get("openConversationId")
    single = body.get("singleChatReceiver")
    if bool(open_cid) == bool(single):
        raise errors.standard_param_error()
    receivers: list[str] = []
    if single:
        receiver = _json_str(single, "singleChatReceiver")
        if receiver is _INVALID or not isinstance(receiver, dict):
            raise errors.standard_not_json()
        uid = receiver.get("userId") or receiver.get("unionId")
        if not _nonempty_str(uid):
            raise errors.standard_param_error()
        assert isinstance(uid, str)
        receivers = [uid]
        conv_type: ConversationType = "direct"
        conv_id = conversation_id(app, "direct", uid)
        space = f"dtv1.card//IM_ROBOT.{uid}"
    else:
        if not isinstance(open_cid, str):
            raise errors.standard_param_error()
        conv_type = "group"
        conv_id = open_cid
        space = f"dtv1.card//IM_GROUP.{open_cid}"
    send_options = body.get("sendOptions") or {}
    if not isinstance(send_options, dict):
        raise errors.standard_param_error()

    existing = ctx.state.cards.get(biz_id)
    if existing is not None:
        if existing.kind != "standard" or existing.client_id != app.client_id:
            raise errors.standard_param_error()
        # Same cardBizId again: DingTalk sends the same card to another
        # conversation; new cardData does not take effect (send doc, cardBizId).
        if space not in existing.spaces:
            existing.spaces.append(space)
        if existing.content != card_data:
            ctx.notes.append("cardBizId reused with different cardData: change ignored")
        _snapshot(ctx, existing)
        return {"processQueryKey": new_b64(ctx.emulator.rng, 24)}

    card = CardRecord(
        card_id=biz_id,
        kind="standard",
        client_id=app.client_id,
        template_id=template,
        conversation_id=conv_id,
        conversation_type=conv_type,
        spaces=[space],
        receiver_user_ids=receivers,
        at_user_ids=_at_user_ids(send_options),
        at_all=bool(send_options.get("atAll")),
        robot_code=robot_code if isinstance(robot_code, str) else None,
        callback_type="HTTP" if body.get("callbackUrl") else None,
        content=card_data,
        delivered=True,
    )
    private = _json_str(body.get("userIdPrivateDataMap"), "userIdPrivateDataMap")
    if isinstance(private, dict):
        for user, values in private.items():
            if isinstance(values, dict):
                card.private_data[str(user)] = dict(values)
    ctx.state.cards[biz_id] = card
    _snapshot(ctx, card)
    return {"processQueryKey": new_b64(ctx.emulator.rng, 24)}


def interactive_cards_update(ctx: OpenApiContext) -> dict[str, Any]:
    """``PUT /v1.0/im/robots/interactiveCards`` (StandardCard update)."""
    body = ctx.body
    _check_types(body, STANDARD_UPDATE_FIELDS, **_STANDARD)
    _check_types(body.get("updateOptions"), UPDATE_OPTIONS, where="updateOptions", **_STANDARD)
    biz_id = body.get("cardBizId")
    if not _nonempty_str(biz_id):
        raise errors.standard_param_error()
    card = _own_card(ctx, biz_id, "standard")
    if card is None:
        raise errors.standard_card_not_exist()
    options = body.get("updateOptions") or {}
    if not isinstance(options, dict):
        raise errors.standard_param_error()
    raw_card = body.get("cardData")
    raw_private = body.get("userIdPrivateDataMap")
    if raw_card is None and raw_private is None:
        raise errors.standard_param_error()
    if raw_card is not None:
        card_data = _json_str(raw_card, "cardData")
        if card_data is _INVALID or not isinstance(card_data, dict):
            raise errors.standard_not_json()
        _check_card_data_size(ctx, raw_card)
        if options.get("updateCardDataByKey"):
            card.content.update(card_data)
        else:
            card.content = card_data
    if raw_private is not None:
        private = _json_str(raw_private, "userIdPrivateDataMap")
        if private is _INVALID or not isinstance(private, dict):
            raise errors.standard_not_json()
        _merge_private(
            card,
            {str(u): dict(v) for u, v in private.items() if isinstance(v, dict)},
            bool(options.get("updatePrivateDataByKey")),
        )
    _snapshot(ctx, card)
    return {"processQueryKey": new_b64(ctx.emulator.rng, 24)}


# --- card instances -----------------------------------------------------------


@dataclass(kw_only=True)
class _Space:
    space_type: str
    space_id: str
    open_space_id: str
    conversation_type: ConversationType | None
    conversation_id: str | None
    at_user_ids: list[str]
    at_all: bool
    receivers: list[str]


def _plan_delivery(ctx: OpenApiContext) -> list[_Space]:
    """Validate the deliver half of a request (openSpaceId + deliver models; the caller
    has checked the types of :data:`DELIVER_FIELDS`)."""
    body, app = ctx.body, ctx.app
    for name, fields in (
        ("imGroupOpenDeliverModel", GROUP_DELIVER_MODEL),
        ("imRobotOpenDeliverModel", ROBOT_DELIVER_MODEL),
    ):
        _check_types(body.get(name), fields, "param.invalid", where=name)
    open_space_id = body.get("openSpaceId")
    if not _nonempty_str(open_space_id):
        raise errors.card_param("param.openSpaceIdEmpty")
    assert isinstance(open_space_id, str)
    plan: list[_Space] = []
    for raw in (s.strip() for s in open_space_id.split(";")):
        if not raw:
            continue
        prefix = "dtv1.card//"
        if not raw.startswith(prefix) or "." not in raw[len(prefix) :]:
            raise errors.card_param("param.openSpaceIdInvalid")
        space_type, _, space_id = raw[len(prefix) :].partition(".")
        if space_type not in KNOWN_SPACE_TYPES or not space_id:
            raise errors.card_param("param.openSpaceIdInvalid")
        space = _Space(
            space_type=space_type,
            space_id=space_id,
            open_space_id=raw,
            conversation_type=None,
            conversation_id=None,
            at_user_ids=[],
            at_all=False,
            receivers=[],
        )
        if space_type == "IM_GROUP":
            model = body.get("imGroupOpenDeliverModel")
            if not isinstance(model, dict):
                raise errors.card_param("param.openDeliverModelEmpty")
            if not _nonempty_str(model.get("robotCode")):
                # GUESS: code for a group deliver model without robotCode.
                raise errors.card_param("param.openDeliverModelError")
            if model.get("robotCode") != app.robot_code:
                ctx.notes.append("imGroupOpenDeliverModel.robotCode is not this app's robot")
            at_ids = model.get("atUserIds") or {}
            if isinstance(at_ids, dict):
                space.at_all = "@ALL" in at_ids
                space.at_user_ids = [str(k) for k in at_ids if k != "@ALL"]
            recipients = model.get("recipients")
            if isinstance(recipients, list):
                space.receivers = [str(r) for r in recipients]
            space.conversation_type = "group"
            space.conversation_id = space_id
        elif space_type == "IM_ROBOT":
            model = body.get("imRobotOpenDeliverModel")
            if not isinstance(model, dict):
                raise errors.card_param("param.openDeliverModelEmpty")
            space.conversation_type = "direct"
            space.conversation_id = conversation_id(app, "direct", space_id)
            space.receivers = [space_id]
        else:
            ctx.notes.append(f"space type {space_type} accepted but not rendered")
        plan.append(space)
    if not plan:
        raise errors.card_param("param.openSpaceIdInvalid")
    return plan


def _apply_delivery(
    ctx: OpenApiContext, card: CardRecord, plan: list[_Space]
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for space in plan:
        if space.open_space_id not in card.spaces:
            card.spaces.append(space.open_space_id)
        if card.conversation_id is None and space.conversation_id is not None:
            card.conversation_id = space.conversation_id
            card.conversation_type = space.conversation_type
        for uid in space.at_user_ids:
            if uid not in card.at_user_ids:
                card.at_user_ids.append(uid)
        card.at_all = card.at_all or space.at_all
        for uid in space.receivers:
            if uid not in card.receiver_user_ids:
                card.receiver_user_ids.append(uid)
        results.append(
            {
                "spaceType": space.space_type,
                "spaceId": space.space_id,
                "success": True,
                "carrierId": new_b64(ctx.emulator.rng, 24),
            }
        )
    card.delivered = True
    return results


def _new_instance(ctx: OpenApiContext) -> CardRecord:
    """Validate the create half of a request and build (not store) the card."""
    body, app = ctx.body, ctx.app
    if not body:
        raise errors.card_param("param.empty")
    _check_types(body, INSTANCE_FIELDS, "param.invalid")
    out_track_id = body.get("outTrackId")
    if not _nonempty_str(out_track_id):
        raise errors.card_param("param.outTrackIdEmpty")
    assert isinstance(out_track_id, str)
    template = body.get("cardTemplateId")
    if not _nonempty_str(template):
        raise errors.card_param("param.cardTemplateIdEmpty")
    assert isinstance(template, str)
    card_data = body.get("cardData")
    if not isinstance(card_data, dict):
        # GUESS: a create request without cardData.
        raise errors.card_param("param.cardPublicDataEmpty")
    values = _param_map(card_data.get("cardParamMap"), ctx.notes, "cardData.cardParamMap")
    if out_track_id in ctx.state.cards:
        raise errors.card_param("param.cardAlreadyExist")
    callback_type = body.get("callbackType")
    card = CardRecord(
        card_id=out_track_id,
        kind="instance",
        client_id=app.client_id,
        template_id=template,
        robot_code=app.robot_code,
        callback_type=callback_type if isinstance(callback_type, str) else None,
        content=values,
    )
    at_ids = body.get("cardAtUserIds")
    if isinstance(at_ids, list):
        card.at_user_ids = [str(u) for u in at_ids]
    card.private_data = _private_data(body.get("privateData"), ctx.notes, "privateData")
    apply_card_flags(card)
    return card


def card_instances_create(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/card/instances``."""
    card = _new_instance(ctx)
    ctx.state.cards[card.card_id] = card
    _snapshot(ctx, card)
    return {"success": True, "result": card.card_id}


def card_instances_deliver(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/card/instances/deliver``."""
    _check_types(ctx.body, DELIVER_FIELDS, "param.invalid")
    out_track_id = ctx.body.get("outTrackId")
    if not _nonempty_str(out_track_id):
        raise errors.card_param("param.outTrackIdEmpty")
    card = _own_card(ctx, out_track_id, "instance")
    if card is None:
        raise errors.card_param("param.cardNotExist")
    plan = _plan_delivery(ctx)
    results = _apply_delivery(ctx, card, plan)
    _snapshot(ctx, card)
    return {"success": True, "result": results}


def card_instances_create_and_deliver(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/card/instances/createAndDeliver``."""
    card = _new_instance(ctx)
    _check_types(ctx.body, DELIVER_FIELDS, "param.invalid")
    plan = _plan_delivery(ctx)
    ctx.state.cards[card.card_id] = card
    results = _apply_delivery(ctx, card, plan)
    _snapshot(ctx, card)
    return {
        "success": True,
        "result": {"outTrackId": card.card_id, "deliverResults": results},
    }


def card_instances_update(ctx: OpenApiContext) -> dict[str, Any]:
    """``PUT /v1.0/card/instances`` (honours ``cardUpdateOptions``)."""
    body = ctx.body
    _check_types(body, INSTANCE_UPDATE_FIELDS, "param.invalid")
    _check_types(
        body.get("cardUpdateOptions"), UPDATE_OPTIONS, "param.invalid", where="cardUpdateOptions"
    )
    out_track_id = body.get("outTrackId")
    if not _nonempty_str(out_track_id):
        raise errors.card_param("param.outTrackIdEmpty")
    card = _own_card(ctx, out_track_id, "instance")
    if card is None:
        # GUESS: update of an unknown card answers like create/deliver do.
        raise errors.card_param("param.cardNotExist")
    options = body.get("cardUpdateOptions") or {}
    card_data = body.get("cardData")
    if card_data is not None:
        values = _param_map(card_data.get("cardParamMap"), ctx.notes, "cardData.cardParamMap")
        if options.get("updateCardDataByKey"):
            card.content.update(values)
        else:
            card.content = values
    private = _private_data(body.get("privateData"), ctx.notes, "privateData")
    _merge_private(card, private, bool(options.get("updatePrivateDataByKey")))
    apply_card_flags(card)
    _snapshot(ctx, card)
    return {"success": True, "result": True}


def card_streaming(ctx: OpenApiContext) -> dict[str, Any]:
    """``PUT /v1.0/card/streaming`` (AI card typewriter updates)."""
    body = ctx.body
    _check_types(body, STREAMING_FIELDS, "param.invalid")
    key = body.get("key")
    content = body.get("content")
    guid = body.get("guid")
    if not _nonempty_str(key):
        raise errors.stream_key_empty()
    # GUESS: an empty string counts as empty content (documented: "content为空").
    if not isinstance(content, str) or content == "":
        raise errors.stream_content_empty()
    if not _nonempty_str(guid):
        raise errors.stream_guid_empty()
    assert isinstance(key, str) and isinstance(guid, str)
    if len(content.encode("utf-8")) > ctx.emulator.stream_content_limit:
        raise errors.stream_content_too_large()
    card = _own_card(ctx, body.get("outTrackId"), "instance")
    if card is None:
        raise errors.stream_card_not_exist()
    if guid in card.stream_guids:
        ctx.notes.append("duplicate guid: update ignored (idempotent)")
        return {"success": True, "result": True}
    card.stream_guids.add(guid)
    card.stream_key = key
    if card.streaming_state in ("finished", "failed"):
        ctx.notes.append("streaming update after the card was finalized")
    if body.get("isFull"):
        card.content[key] = content
    else:
        previous = card.content.get(key, "")
        card.content[key] = (previous if isinstance(previous, str) else "") + content
    if body.get("isError"):
        card.streaming_state = "failed"
        card.error = True
    elif body.get("isFinalize"):
        card.streaming_state = "finished"
        card.finalized = True
    else:
        card.streaming_state = "inputing"
    _snapshot(ctx, card)
    return {"success": True, "result": True}


# --- robot messages -----------------------------------------------------------


ROBOT_MSG_KEYS = frozenset(
    {
        "sampleText",
        "sampleMarkdown",
        "sampleImageMsg",
        "sampleLink",
        "sampleActionCard",
        "sampleActionCard2",
        "sampleActionCard3",
        "sampleActionCard4",
        "sampleActionCard5",
        "sampleActionCard6",
        "sampleAudio",
        "sampleFile",
        "sampleVideo",
    }
)
"""``msgKey`` values of the robot message APIs [DT-doc robot-message-type]."""

MSG_PARAM_MAX_BYTES = 15_000
"""``msgParam`` of a robot send: at most 15,000 bytes [DT-doc the-robot-sends-a-group-message]."""


def _media_param(ctx: OpenApiContext, msg_key: str, msg_param: Any) -> MediaRecord | None:
    """Check the media a ``sampleImageMsg``/``sampleFile``/... refers to; return it."""
    if not isinstance(msg_param, dict):
        raise errors.robot_param_error("msgParam must be a JSON object")
    if msg_key == "sampleImageMsg":
        ref = msg_param.get("photoURL")
        if not _nonempty_str(ref):
            raise errors.robot_param_error("photoURL is mandatory")
        assert isinstance(ref, str)
        if ref.startswith(("http://", "https://")):
            return None  # an image by URL: nothing uploaded to check
    elif msg_key == "sampleFile":
        ref = msg_param.get("mediaId")
        for name in ("mediaId", "fileName", "fileType"):
            if not _nonempty_str(msg_param.get(name)):
                raise errors.robot_param_error(f"{name} is mandatory")
    else:  # sampleAudio / sampleVideo
        ref = msg_param.get("mediaId") or msg_param.get("videoMediaId")
        if not _nonempty_str(ref):
            raise errors.robot_param_error("mediaId is mandatory")
    media = ctx.state.media.get(str(ref))
    if media is None or media.client_id != ctx.app.client_id:
        raise errors.robot_media_not_exist()
    return media


def _robot_message_common(ctx: OpenApiContext) -> tuple[str, Any, MediaRecord | None]:
    body, app = ctx.body, ctx.app
    robot_code = body.get("robotCode")
    msg_key = body.get("msgKey")
    if not _nonempty_str(robot_code):
        raise errors.robot_param_error("robotCode is mandatory")
    if robot_code != app.robot_code:
        raise errors.robot_not_exist()
    if not _nonempty_str(msg_key):
        raise errors.robot_param_error("msgKey is mandatory")
    assert isinstance(msg_key, str)
    if msg_key not in ROBOT_MSG_KEYS:
        raise errors.robot_param_error(f"msgKey {msg_key} is not supported")
    raw_param = body.get("msgParam")
    msg_param = _json_str(raw_param, "msgParam")
    if msg_param is _INVALID:
        raise errors.robot_param_error("msgParam must be a JSON string")
    assert isinstance(raw_param, str)
    if len(raw_param.encode("utf-8")) > MSG_PARAM_MAX_BYTES:
        raise errors.robot_msg_param_too_long(MSG_PARAM_MAX_BYTES)
    media = None
    if msg_key in ("sampleImageMsg", "sampleFile", "sampleAudio", "sampleVideo"):
        media = _media_param(ctx, msg_key, msg_param)
    return msg_key, msg_param, media


def robot_batch_send(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/robot/oToMessages/batchSend`` (1:1 messages to users)."""
    msg_key, msg_param, media = _robot_message_common(ctx)
    user_ids = ctx.body.get("userIds")
    if not isinstance(user_ids, list) or not user_ids:
        raise errors.robot_param_error("userIds is mandatory")
    users = [str(u) for u in user_ids]
    key = new_b64(ctx.emulator.rng, 24)
    record = SentMessage(
        client_id=ctx.app.client_id,
        route=ctx.route,
        robot_code=ctx.app.robot_code,
        msg_key=msg_key,
        msg_param=msg_param,
        user_ids=users,
        # the robot's 1:1 chat with the user, when there is one receiver
        conversation_id=conversation_id(ctx.app, "direct", users[0]) if len(users) == 1 else None,
        process_query_key=key,
        media=media,
    )
    ctx.state.sent_messages.append(record)
    ctx.state.emit("sent", record)
    return {"processQueryKey": key, "invalidStaffIdList": [], "flowControlledStaffIdList": []}


def robot_group_send(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/robot/groupMessages/send``."""
    msg_key, msg_param, media = _robot_message_common(ctx)
    open_cid = ctx.body.get("openConversationId")
    if not _nonempty_str(open_cid):
        raise errors.robot_param_error("openConversationId is mandatory")
    assert isinstance(open_cid, str)
    key = new_b64(ctx.emulator.rng, 24)
    record = SentMessage(
        client_id=ctx.app.client_id,
        route=ctx.route,
        robot_code=ctx.app.robot_code,
        msg_key=msg_key,
        msg_param=msg_param,
        user_ids=[],
        conversation_id=open_cid,
        process_query_key=key,
        media=media,
    )
    ctx.state.sent_messages.append(record)
    ctx.state.emit("sent", record)
    return {"processQueryKey": key}


def robot_file_download(ctx: OpenApiContext) -> dict[str, Any]:
    """``POST /v1.0/robot/messageFiles/download`` → a temporary URL on the emulator."""
    code = ctx.body.get("downloadCode")
    robot_code = ctx.body.get("robotCode")
    if not _nonempty_str(code):
        raise errors.robot_param_error("downloadCode is mandatory")
    if not _nonempty_str(robot_code):
        raise errors.robot_param_error("robotCode is mandatory")
    if robot_code != ctx.app.robot_code:
        raise errors.robot_not_exist()
    assert isinstance(code, str)
    stored = ctx.state.files.get(code)
    if stored is None or stored.client_id != ctx.app.client_id:
        raise errors.download_code_invalid()
    token = ctx.emulator.download_token(stored)
    return {"downloadUrl": f"{ctx.emulator.base_url}/_emulator/files/{quote(token, safe='')}"}


ROUTES: list[tuple[str, str, str, OpenApiHandler]] = [
    (
        "POST",
        "/v1.0/im/v1.0/robot/interactiveCards/send",
        "interactiveCards.send",
        interactive_cards_send,
    ),
    (
        "PUT",
        "/v1.0/im/robots/interactiveCards",
        "interactiveCards.update",
        interactive_cards_update,
    ),
    ("POST", "/v1.0/card/instances", "card.instances.create", card_instances_create),
    ("POST", "/v1.0/card/instances/deliver", "card.instances.deliver", card_instances_deliver),
    (
        "POST",
        "/v1.0/card/instances/createAndDeliver",
        "card.instances.createAndDeliver",
        card_instances_create_and_deliver,
    ),
    ("PUT", "/v1.0/card/instances", "card.instances.update", card_instances_update),
    ("PUT", "/v1.0/card/streaming", "card.streaming", card_streaming),
    ("POST", "/v1.0/robot/oToMessages/batchSend", "robot.oToMessages.batchSend", robot_batch_send),
    ("POST", "/v1.0/robot/groupMessages/send", "robot.groupMessages.send", robot_group_send),
    (
        "POST",
        "/v1.0/robot/messageFiles/download",
        "robot.messageFiles.download",
        robot_file_download,
    ),
]
"""(method, path, route name, handler) for every token-protected OpenAPI route."""

ROUTE_SCOPES: dict[str, str] = {
    "interactiveCards.send": "Card.Instance.Write",
    "interactiveCards.update": "Card.Instance.Write",
    "card.instances.create": "Card.Instance.Write",
    "card.instances.deliver": "Card.Instance.Write",
    "card.instances.createAndDeliver": "Card.Instance.Write",
    "card.instances.update": "Card.Instance.Write",
    "card.streaming": "Card.Streaming.Write",
    "robot.oToMessages.batchSend": "qyapi_robot_sendmsg",
    "robot.groupMessages.send": "qyapi_robot_sendmsg",
}
"""The permission each route needs (``Card.Instance.Write`` and ``Card.Streaming.Write``
per PROTOCOLS 2.4/2.5; GUESS: the StandardCard routes' and the robot sends' scopes)."""

CARD_ROUTES = frozenset(r for r, scope in ROUTE_SCOPES.items() if scope.startswith("Card."))
"""Routes that make or change cards."""
