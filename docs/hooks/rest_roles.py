"""A griffe extension for the API reference: the docstrings are written with
reStructuredText roles (:class:`~imrobots.models.Message`), literals (``text``) and
literal blocks introduced by ``::``; mkdocstrings renders Markdown, so roles become
inline code (the ``~`` form showing the last name, as Sphinx does) and ``::`` a colon
before the (indented, so already code) block."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const|type):`(~?)([^`]+)`")


def convert(text: str) -> str:
    """Roles as inline code."""

    def role(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        return f"`{shown}`"

    text = _ROLE.sub(role, text)
    return re.sub(r"(?<=\S)::\n", ":\n", re.sub(r"\n[ \t]*::\n", "\n", text))


class RestRoles(griffe.Extension):
    """Rewrite every docstring's roles once it is loaded."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and docstring.value:
            docstring.value = convert(docstring.value)
