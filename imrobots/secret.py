"""A string that never shows itself in reprs, logs, error messages or serialized config.

``Secret`` is deliberately not an attrs class: ``attrs.asdict`` and ``cattrs``'s unstructure
recurse into attrs instances, which would copy the value out into a plain dict. As an opaque
object it stays wrapped (and prints ``***``) wherever a config is turned into data.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Secret"]


class Secret:
    """Holds a credential. ``str()``/``repr()`` print ``***``; call :meth:`get` to use it.

    Equal to another ``Secret`` with the same value (never to a plain ``str``); hashable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The credential itself; pass it only to the call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling (e.g. to a worker process) keeps the value; it is never printed.
        return (Secret, (self._value,))
