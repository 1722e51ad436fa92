"""Platform-neutral models of what a robot receives.

All models are frozen attrs classes with keyword-only arguments. Platform
plugins build them from wire payloads with their own converters; the models
themselves know nothing about any platform's JSON.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

__all__ = [
    "Attachment",
    "CardAction",
    "Conversation",
    "ConversationKind",
    "Feedback",
    "FeedbackRating",
    "Message",
    "MessageKind",
    "Sender",
]


def _now() -> datetime:
    return datetime.now(UTC)


class ConversationKind(enum.StrEnum):
    """Whether a conversation is a one-to-one chat with the robot or a group."""

    DIRECT = "direct"
    GROUP = "group"


class MessageKind(enum.StrEnum):
    """What a message carries. Unknown platform types become ``UNSUPPORTED``, never a crash."""

    TEXT = "text"
    RICH_TEXT = "rich_text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    FILE = "file"
    UNSUPPORTED = "unsupported"


@attrs.frozen(kw_only=True)
class Conversation:
    """Where a message was said."""

    id: str
    """The platform's conversation id."""
    kind: ConversationKind = ConversationKind.DIRECT
    """Direct chat or group."""
    title: str | None = None
    """The group's title, when the platform sends it."""

    @property
    def is_group(self) -> bool:
        return self.kind is ConversationKind.GROUP


@attrs.frozen(kw_only=True)
class Sender:
    """Who said it."""

    id: str
    """The platform's stable user id (DingTalk staff id, Feishu open_id, WeCom userid)."""
    name: str | None = None
    """Display name, when known."""
    is_admin: bool = False


@attrs.frozen(kw_only=True)
class Attachment:
    """A file, picture or recording attached to a message."""

    kind: str
    """``image``, ``audio``, ``video`` or ``file``."""
    name: str | None = None
    url: str | None = None
    download_code: str | None = attrs.field(default=None, repr=False)
    """Platform handle to download the content (DingTalk downloadCode)."""
    text: str | None = None
    """Speech recognition of an audio message, when the platform provides it."""


@attrs.frozen(kw_only=True)
class Message:
    """One message sent to a robot."""

    id: str
    """The platform's message id; used to drop redeliveries."""
    platform: str
    """Name of the platform it came from (``dingtalk``, ``feishu``, ``memory``...)."""
    text: str
    """Plain text of the message, with the robot's own @-mention removed and whitespace trimmed."""
    conversation: Conversation
    sender: Sender
    kind: MessageKind = MessageKind.TEXT
    mentioned: bool = False
    """Whether the robot was @-mentioned (always true in direct chats)."""
    mentions: tuple[Sender, ...] = ()
    """Other users @-mentioned in the message."""
    attachments: tuple[Attachment, ...] = ()
    time: datetime = attrs.field(factory=_now)
    """When the user sent it (timezone-aware)."""
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    """The platform's payload, for plugins and advanced robots. Never shown in reprs."""
    robot: str | None = None
    """Name of the robot it was sent to, filled in by the runtime."""

    @property
    def conversation_key(self) -> str:
        """A key unique across platforms: ``platform:conversation id``."""
        return f"{self.platform}:{self.conversation.id}"


class FeedbackRating(enum.StrEnum):
    """The four feedback buttons of an answer card (the seed's choices)."""

    VERY_HELPFUL = "very_helpful"
    HELPFUL = "helpful"
    NOT_MUCH_HELP = "not_much_help"
    NO_HELP = "no_help"

    @property
    def label(self) -> str:
        return _RATING_LABELS[self]

    @property
    def helpful(self) -> bool:
        """The seed's coarse type: helpful or unhelpful."""
        return self in (FeedbackRating.VERY_HELPFUL, FeedbackRating.HELPFUL)


_RATING_LABELS = {
    FeedbackRating.VERY_HELPFUL: "Very helpful",
    FeedbackRating.HELPFUL: "Helpful",
    FeedbackRating.NOT_MUCH_HELP: "Not much help",
    FeedbackRating.NO_HELP: "No help",
}


@attrs.frozen(kw_only=True)
class CardAction:
    """A user pressed a button on a card."""

    id: str
    """Unique id of this press (platform callback id), used to drop duplicates."""
    platform: str
    card_id: str
    """The card the button belongs to."""
    action_id: str
    """The element id of the button."""
    value: str
    """The value the button carries (for answer cards, a signed feedback token)."""
    sender: Sender
    conversation: Conversation | None = None
    time: datetime = attrs.field(factory=_now)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    robot: str | None = None


@attrs.frozen(kw_only=True)
class Feedback:
    """A verified feedback button press on an answer card."""

    robot: str
    platform: str
    message_id: str
    """Id of the message whose answer is rated."""
    rating: FeedbackRating
    sender: Sender
    question: str
    answer: str
    conversation_id: str | None = None
    card_id: str | None = None
    time: datetime = attrs.field(factory=_now)

    @property
    def helpful(self) -> bool:
        return self.rating.helpful
