"""The access policy: who may talk to a robot, checked before any side effect."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .models import Message

__all__ = ["AccessPolicy", "GroupPolicy"]


@attrs.frozen(kw_only=True)
class GroupPolicy:
    """Overrides for one group; ``None`` keeps the robot-wide setting."""

    require_mention: bool | None = None
    allow_users: tuple[str, ...] | None = None
    deny_users: tuple[str, ...] | None = None
    enabled: bool = True


@attrs.frozen(kw_only=True)
class AccessPolicy:
    """Allow and deny lists of users and groups, and the @-mention rule.

    Empty allow lists mean "everyone". Deny lists win over allow lists.
    """

    direct: bool = True
    """Answer direct (one-to-one) messages."""
    groups: bool = True
    """Answer in groups."""
    require_mention: bool = True
    """In groups, answer only when the robot is @-mentioned."""
    allow_users: tuple[str, ...] = ()
    deny_users: tuple[str, ...] = ()
    allow_groups: tuple[str, ...] = ()
    deny_groups: tuple[str, ...] = ()
    group_overrides: Mapping[str, GroupPolicy] = attrs.field(factory=dict)

    def check(self, message: Message) -> str | None:
        """Return why ``message`` is rejected, or ``None`` when it may be answered."""
        conversation = message.conversation
        sender = message.sender.id
        allow_users, deny_users = self.allow_users, self.deny_users
        require_mention = self.require_mention
        if conversation.is_group:
            if not self.groups:
                return "group messages are disabled"
            if conversation.id in self.deny_groups:
                return "group is denied"
            if self.allow_groups and conversation.id not in self.allow_groups:
                return "group is not allowed"
            override = self.group_overrides.get(conversation.id)
            if override is not None:
                if not override.enabled:
                    return "group is disabled"
                if override.require_mention is not None:
                    require_mention = override.require_mention
                if override.allow_users is not None:
                    allow_users = override.allow_users
                if override.deny_users is not None:
                    deny_users = override.deny_users
            if require_mention and not message.mentioned:
                return "robot not mentioned"
        elif not self.direct:
            return "direct messages are disabled"
        if sender in deny_users:
            return "user is denied"
        if allow_users and sender not in allow_users:
            return "user is not allowed"
        return None
