"""Name -> architecture builder. A variant is data (its kwargs), not a subclass."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Builder = Callable[[], nn.Module]
_REGISTRY: dict[str, Builder] = {}


class UnknownArchError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown arch {self.name!r}; valid: {', '.join(list_models())}"


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"arch {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str) -> nn.Module:
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise UnknownArchError(name) from None
    return builder()


def arch_for_model_id(model_id: str) -> str:
    """Model ids are named `<dataset>_<arch>_<tag>` (`mnist_digitnet_v1`): the job names no arch,
    so the id carries it. The longest registered arch found between underscores wins."""
    padded = f"_{model_id}_"
    for name in sorted(_REGISTRY, key=len, reverse=True):
        if f"_{name}_" in padded:
            return name
    raise UnknownArchError(model_id)
