"""Hypothesis strategies shared by the plugins' fuzz tests (issue 12, Build 5): JSON values
of any shape, text with lone surrogates, and documented payloads with fields replaced or
removed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""Moderate: the whole suite runs in a few minutes on 2 cores."""

LONE_SURROGATES = ("\ud800", "\udfff", "a\udc00b")

text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=())
    | st.sampled_from(["\ud800", "\udfff"]),
    max_size=30,
)
"""Any text, lone surrogates included (what a ``\\ud800`` escape in JSON parses to)."""

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | text
)

json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=15,
)
"""A JSON value of any shape."""


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some fields replaced by any JSON value and some removed."""
    keys = sorted(base)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(base)
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            out[key] = draw(json_values)
        for key in draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)):
            out.pop(key, None)
        return out

    return build()


def deep(levels: int = 100_000) -> str:
    """JSON text nested ``levels`` deep (a parser's recursion limit)."""
    return "[" * levels + "]" * levels


def encodable(value: str) -> bool:
    """The text encodes to UTF-8 (no lone surrogate reached the core)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
