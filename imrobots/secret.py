"""A string that never shows itself in reprs, logs or error messages."""

from __future__ import annotations

import attrs

__all__ = ["Secret"]


@attrs.frozen(repr=False)
class Secret:
    """Holds a credential. ``str()``/``repr()`` print ``***``; call :meth:`get` to use it."""

    _value: str = attrs.field(alias="value")

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)
