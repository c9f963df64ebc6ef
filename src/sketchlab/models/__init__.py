"""The models. The registry (command-line names -> model classes, imported lazily) lives with the
model interface in `sketchlab.models.base`; it is re-exported here."""

from __future__ import annotations

from sketchlab.models.base import (
    CAPABILITIES, MODELS, available, get_model_class, model_classes, models_with, models_with_option,
)

__all__ = ["CAPABILITIES", "MODELS", "available", "get_model_class", "model_classes", "models_with",
           "models_with_option"]
