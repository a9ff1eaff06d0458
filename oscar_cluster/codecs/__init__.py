"""KV codecs behind one interface: `names()`, `get(name, **options)` (DESIGN.md section 4)."""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError, UnknownCodecError
from .base import Codec, Encoded

__all__ = ["Codec", "Encoded", "register", "names", "get"]

_REGISTRY: dict[str, type[Codec]] = {}


def register(name: str) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator: make a codec available as `get(name)`."""

    def wrap(cls: type[Codec]) -> type[Codec]:
        if name in _REGISTRY:
            raise RuntimeError(f"codec {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def names() -> list[str]:
    """Registered codec names, references first."""
    return list(_REGISTRY)


def get(name: str, **options) -> Codec:
    """A new codec instance. Unknown names list the valid ones; unknown options name themselves."""
    if name not in _REGISTRY:
        raise UnknownCodecError(f"unknown codec {name!r}; valid names: {', '.join(names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as e:
        raise ConfigError(f"codec {name!r}: bad options {sorted(options)}: {e}") from None


# Import order = listing order of names().
from . import reference as _reference  # noqa: E402,F401
from . import int2 as _int2  # noqa: E402,F401
from . import kivi as _kivi  # noqa: E402,F401
from . import hadamard as _hadamard  # noqa: E402,F401
from . import oscar_paper as _oscar_paper  # noqa: E402,F401
from . import oscar as _oscar  # noqa: E402,F401
