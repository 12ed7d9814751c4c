"""Architectures, registered by name and built through `create_model`."""

from handwriting_ai.models import cnn, resnet  # noqa: F401  (registers the architectures)
from handwriting_ai.models.registry import (
    UnknownArchError,
    arch_for_model_id,
    create_model,
    list_models,
)

__all__ = ["UnknownArchError", "arch_for_model_id", "create_model", "list_models"]
