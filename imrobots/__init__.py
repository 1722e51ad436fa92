"""imrobots: put AI agents and other Python code into enterprise chat.

The public API. Plugins and robots use only what is exported here.
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
    PlatformError,
    PlatformUnavailable,
    PluginError,
    RateLimited,
    RetryableError,
)
from .models import (
    Attachment,
    CardAction,
    Conversation,
    ConversationKind,
    Feedback,
    FeedbackRating,
    Message,
    MessageKind,
    Sender,
)
from .platform import Capabilities, CardRef, EventSink, Platform, PlatformSpec, StreamingMode
from .plugins import get_plugin_manager, hookimpl
from .policy import AccessPolicy, GroupPolicy
from .robot import Reply, Robot
from .runtime import RobotRuntime, RuntimeOptions
from .secret import Secret
from .store import ClaimResult, MemoryStore, Store, Turn
from .streaming import AnswerResult, AnswerStatus, StreamPolicy

__version__ = "0.1.0"

__all__ = [
    "AccessPolicy",
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
    "ClaimResult",
    "ConfigError",
    "Conversation",
    "ConversationKind",
    "Divider",
    "EmulatorAdapter",
    "EventSink",
    "FatalPlatformError",
    "Feedback",
    "FeedbackRating",
    "GroupPolicy",
    "ImrobotsError",
    "Markdown",
    "MemoryStore",
    "Message",
    "MessageKind",
    "Note",
    "Platform",
    "PlatformError",
    "PlatformSpec",
    "PlatformUnavailable",
    "PluginError",
    "RateLimited",
    "Reply",
    "RetryableError",
    "Robot",
    "RobotRuntime",
    "RuntimeOptions",
    "Secret",
    "Sender",
    "Store",
    "StreamPolicy",
    "StreamingMode",
    "Turn",
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
