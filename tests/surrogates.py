"""Text holding lone surrogates, as a client sends it, for the emulators' tests."""

from __future__ import annotations

import json
from typing import Any

LONE = "a\ud800b"
"""A lone (high) surrogate between two letters: valid in JSON, not in UTF-8."""
FINE = "fine 好 \U0001f642"
"""Text UTF-8 carries; json.dumps escapes it as ``\\u597d`` and the surrogate *pair*
``\\ud83d\\ude42``, which must not be taken for a lone surrogate."""


def escaped(value: Any) -> str:
    """``value`` as JSON text, each lone surrogate written as its escape (as on the wire)."""
    text = json.dumps(value)  # ensure_ascii: "\ud800" travels as the six characters \ud800
    assert "\\ud" in text
    return text
