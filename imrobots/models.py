"""Platform-neutral models of what a robot receives.

All models are frozen attrs classes with keyword-only arguments. Platform
plugins build them from wire payloads with their own converters; the models
themselves know nothing about any platform's JSON.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .errors import NotSupported

__all__ = [
    "Attachment",
    "CardAction",
    "ChatEntered",
    "Conversation",
    "ConversationKind",
    "Feedback",
    "FeedbackRating",
    "Message",
    "MessageKind",
    "Quote",
    "Sender",
    "Target",
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


Downloader = Callable[["Attachment"], Awaitable[bytes]]
"""How a platform fetches an attachment's content: ``download(attachment) -> bytes``."""


@attrs.frozen(kw_only=True)
class Attachment:
    """A file, picture, recording or video attached to a message.

    The content is fetched lazily, by the platform that received the message,
    only from that platform's own hosts: ``await attachment.read()`` returns the
    bytes, ``await attachment.save(path)`` writes them. Reading an attachment of
    a platform that cannot download raises :class:`~imrobots.errors.NotSupported`.
    """

    kind: str
    """``image``, ``audio``, ``video`` or ``file``."""
    name: str | None = None
    """File name, when the platform sends one."""
    id: str | None = None
    """The platform's id of the content (Feishu ``image_key``/``file_key``...)."""
    url: str | None = None
    download_code: str | None = attrs.field(default=None, repr=False)
    """Platform handle to download the content (DingTalk ``downloadCode``)."""
    text: str | None = None
    """Speech recognition of an audio message, when the platform provides it."""
    size: int | None = None
    """Size in bytes, when the platform says."""
    mime_type: str | None = None
    duration: float | None = None
    """Seconds, for audio and video, when the platform says."""
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    """Whatever else the platform needs to download it (keys, message id...)."""
    downloader: Downloader | None = attrs.field(default=None, repr=False, eq=False, hash=False)
    """Set by the runtime from the platform that received the message."""

    async def read(self) -> bytes:
        """Download the content. Raises :class:`NotSupported` if the platform cannot, and
        the platform's :class:`~imrobots.errors.PlatformError` if the download fails."""
        if self.downloader is None:
            raise NotSupported(f"cannot download this {self.kind}: its platform has no downloads")
        return await self.downloader(self)

    async def save(self, path: str | Path) -> Path:
        """Download the content into ``path`` (a file; written in a worker thread)."""
        data = await self.read()
        target = Path(path)
        await asyncio.to_thread(target.write_bytes, data)
        return target


@attrs.frozen(kw_only=True)
class Quote:
    """The message a user quoted (replied to) when writing to the robot."""

    id: str | None = None
    """The quoted message's id, when the platform sends it."""
    text: str = ""
    sender: Sender | None = None
    attachments: tuple[Attachment, ...] = ()


@attrs.frozen(kw_only=True)
class Target:
    """Where to speak: the value every outbound call (reply, proactive send, answer to a
    button press) goes to. Inbound messages and card actions carry one (``.target``).

    Make one for a proactive send with :meth:`to_user` or :meth:`to_group`.
    """

    platform: str
    """Name of the platform (``dingtalk``, ``memory``...)."""
    conversation: Conversation | None = None
    """The conversation; ``None`` for a direct message to :attr:`user` whose
    conversation id is not known."""
    user: Sender | None = None
    """The person spoken to: the sender being answered, or a direct message's receiver."""
    thread: str | None = None
    """The thread to answer in, on platforms with threads."""
    reply_to: str | None = None
    """Id of the message being answered, when there is one."""
    mentions: tuple[str, ...] = ()
    """User ids to @-mention, where the platform allows."""
    app: str | None = None
    """The platform app the robot speaks as, when known."""
    context: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    """Plugin-private facts about the target (e.g. a reply webhook of the inbound message);
    JSON-able, so that a stream can be restored after a restart. Never shown in reprs."""

    @classmethod
    def to_user(cls, platform: str, user_id: str, *, app: str | None = None) -> Target:
        """A direct message to one user (platform user id)."""
        return cls(platform=platform, user=Sender(id=user_id), app=app)

    @classmethod
    def to_group(
        cls,
        platform: str,
        conversation_id: str,
        *,
        mentions: tuple[str, ...] = (),
        thread: str | None = None,
        app: str | None = None,
    ) -> Target:
        """A group conversation, optionally @-mentioning users and in a thread."""
        return cls(
            platform=platform,
            conversation=Conversation(id=conversation_id, kind=ConversationKind.GROUP),
            mentions=mentions,
            thread=thread,
            app=app,
        )

    @property
    def is_group(self) -> bool:
        return self.conversation is not None and self.conversation.is_group

    @property
    def key(self) -> str:
        """``platform:conversation`` (or ``platform:user:ID``): the rate-limit and lane key."""
        if self.conversation is not None:
            return f"{self.platform}:{self.conversation.id}"
        return f"{self.platform}:user:{self.user.id if self.user else '?'}"


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
    quote: Quote | None = None
    """The message the user quoted, if any."""
    thread: str | None = None
    """The thread it was said in, on platforms with threads."""
    app: str | None = None
    """The platform app that received it, when the plugin knows it."""

    @property
    def conversation_key(self) -> str:
        """A key unique across platforms: ``platform:conversation id``."""
        return f"{self.platform}:{self.conversation.id}"

    @property
    def has_text(self) -> bool:
        """Whether there is text to answer (not empty, not only white space)."""
        return bool(self.text.strip())

    @property
    def target(self) -> Target:
        """Where an answer to this message goes: its conversation, thread and sender."""
        return Target(
            platform=self.platform,
            conversation=self.conversation,
            user=self.sender,
            thread=self.thread,
            reply_to=self.id,
            app=self.app,
            context=self.raw,
        )


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
    app: str | None = None

    @property
    def target(self) -> Target:
        """Where an answer to this press goes: the card's conversation (or the presser)."""
        return _event_target(self)


@attrs.frozen(kw_only=True)
class ChatEntered:
    """A user opened a chat with the robot (WeCom ``enter_chat``). The robot may greet them
    (:meth:`Robot.on_enter_chat <imrobots.Robot.on_enter_chat>`), within the platform's
    deadline (WeCom: 5 s)."""

    id: str
    """Unique id of the event, used to drop duplicates."""
    platform: str
    sender: Sender
    conversation: Conversation | None = None
    time: datetime = attrs.field(factory=_now)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    robot: str | None = None
    app: str | None = None

    @property
    def target(self) -> Target:
        """Where a greeting goes: the chat that was opened (or the user)."""
        return _event_target(self)


def _event_target(event: CardAction | ChatEntered) -> Target:
    """The target of an event a user caused outside a message: its conversation, or the
    user, with the event's payload as context."""
    return Target(
        platform=event.platform,
        conversation=event.conversation,
        user=event.sender,
        app=event.app,
        context=event.raw,
    )


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
