"""imrobots: put AI agents and other Python code into enterprise chat.

The public API for robot authors. Plugin authors import from
:mod:`imrobots.platform`, emulator authors from :mod:`imrobots.emulation`,
test authors from :mod:`imrobots.testing`.
"""

from __future__ import annotations

from .agents import Agent, AgentRequest, as_agent
from .cards import (
    Actions,
    Button,
    Card,
    CardStatus,
    Divider,
    Markdown,
    Note,
    error_card,
    final_card,
    interrupted_card,
    streaming_card,
    thinking_card,
)
from .emulation import EmulatorAdapter, card_view_blocks
from .errors import (
    CardGone,
    ConfigError,
    FatalPlatformError,
    ImrobotsError,
    NotSupported,
    OutcomeUnknown,
    PlatformError,
    PlatformUnavailable,
    PluginError,
    RateLimited,
    Refused,
    RetryableError,
)
from .models import (
    Attachment,
    CardAction,
    ChatEntered,
    Conversation,
    ConversationKind,
    Feedback,
    FeedbackRating,
    Message,
    MessageKind,
    Quote,
    Sender,
    Target,
)
from .platform import (
    Capabilities,
    CardRef,
    EventSink,
    LifetimeRemedy,
    Op,
    Platform,
    PlatformSpec,
    RateLimit,
    Scope,
    SizeUnit,
    StreamHandle,
    StreamingMode,
    Upload,
)
from .plugins import get_plugin_manager, hookimpl
from .policy import AccessPolicy, GroupPolicy
from .robot import ActionReply, Reply, Robot
from .runtime import RobotRuntime, RuntimeOptions
from .secret import Secret
from .store import ClaimResult, MemoryStore, Store, Turn
from .streaming import AnswerResult, AnswerStatus, Delivery, StreamPolicy

__version__ = "0.1.0"

__all__ = [
    "AccessPolicy",
    "ActionReply",
    "Actions",
    "Agent",
    "AgentRequest",
    "AnswerResult",
    "AnswerStatus",
    "Attachment",
    "Button",
    "Capabilities",
    "Card",
    "CardAction",
    "CardGone",
    "CardRef",
    "CardStatus",
    "ChatEntered",
    "ClaimResult",
    "ConfigError",
    "Conversation",
    "ConversationKind",
    "Delivery",
    "Divider",
    "EmulatorAdapter",
    "EventSink",
    "FatalPlatformError",
    "Feedback",
    "FeedbackRating",
    "GroupPolicy",
    "ImrobotsError",
    "LifetimeRemedy",
    "Markdown",
    "MemoryStore",
    "Message",
    "MessageKind",
    "NotSupported",
    "Note",
    "Op",
    "OutcomeUnknown",
    "Platform",
    "PlatformError",
    "PlatformSpec",
    "PlatformUnavailable",
    "PluginError",
    "Quote",
    "RateLimit",
    "RateLimited",
    "Refused",
    "Reply",
    "RetryableError",
    "Robot",
    "RobotRuntime",
    "RuntimeOptions",
    "Scope",
    "Secret",
    "Sender",
    "SizeUnit",
    "Store",
    "StreamHandle",
    "StreamPolicy",
    "StreamingMode",
    "Target",
    "Turn",
    "Upload",
    "__version__",
    "as_agent",
    "card_view_blocks",
    "error_card",
    "final_card",
    "get_plugin_manager",
    "hookimpl",
    "interrupted_card",
    "streaming_card",
    "thinking_card",
]
