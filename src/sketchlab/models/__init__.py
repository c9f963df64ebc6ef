"""The models. The registry (command-line names -> model classes, imported lazily) and the presets
(`presets("sketch-rnn")` -> {"paper": Config, "cpu": Config}) live with the model interface in
`sketchlab.models.base`; they are re-exported here."""

from __future__ import annotations

from sketchlab.models.base import (
    CAPABILITIES, MODELS, PRESETS, available, get_model_class, model_classes, models_with,
    models_with_option, paper_categories, preset, presets,
)

__all__ = ["CAPABILITIES", "MODELS", "PRESETS", "available", "get_model_class", "model_classes",
           "models_with", "models_with_option", "paper_categories", "preset", "presets"]
