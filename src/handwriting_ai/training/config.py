"""`TrainConfig`: everything a run needs, frozen; its recipe (minus bookkeeping) is hashed."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from attrs import evolve, frozen

from handwriting_ai.contracts.converter import converter

Morph = Literal["none", "erode", "dilate", "both"]


@frozen
class AugmentConfig:
    """Knobs default to off; `robust()` is what `augment=true` turns on."""

    rotate_deg: float = 0.0
    scale: float = 0.0
    shift_px: float = 0.0
    shear_deg: float = 0.0
    noise_prob: float = 0.0
    noise_amount: float = 0.02
    dots_prob: float = 0.0
    dots_count: int = 3
    dots_size_px: int = 2
    blur_prob: float = 0.0
    blur_sigma: float = 0.8
    morph_prob: float = 0.0
    morph: Morph = "none"
    # Elastic distortion: the share of samples, their RMS displacement (px), its smoothness (px).
    elastic_prob: float = 0.0
    elastic_px: float = 1.0
    elastic_sigma: float = 4.0

    @property
    def enabled(self) -> bool:
        return any(
            v > 0
            for v in (
                self.rotate_deg,
                self.scale,
                self.shift_px,
                self.shear_deg,
                self.noise_prob,
                self.dots_prob,
                self.blur_prob,
                self.morph_prob,
                self.elastic_prob,
            )
        )

    @staticmethod
    def robust() -> AugmentConfig:
        return AugmentConfig(
            rotate_deg=12.0,
            scale=0.12,
            shift_px=2.0,
            shear_deg=10.0,
            noise_prob=0.15,
            dots_prob=0.2,
            blur_prob=0.1,
            morph_prob=0.25,
            morph="both",
        )


@frozen
class TrainConfig:
    model_id: str
    arch: str = "digitnet"
    epochs: int = 1
    batch_size: int = 0  # 0: auto
    lr: float = 0.003
    weight_decay: float = 5e-4
    seed: int = 42
    augment: bool = False
    aug: AugmentConfig = AugmentConfig()
    val_size: int = 5000
    threads: int = 0  # 0: auto
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # An exponential moving average of the weights, updated each step, is what gets validated and
    # shipped; 0 turns it off (the weights of the last step, as before).
    ema_decay: float = 0.0
    notes: str = ""
    parent_model_id: str | None = None
    # The job that asked for the run (empty for `digits train`): kept in the manifest.
    request_id: str = ""
    entry_id: str = ""
    # Corrections to mix in (`training/feedback.py`), empty: none. The file is scratch (a path,
    # kept out of the recipe); how the corrections are used (held back, repeated) is recipe.
    feedback_path: str = ""
    feedback_holdout: float = 0.2
    feedback_repeat: int = 20

    def effective_aug(self) -> AugmentConfig:
        """`augment=true` with untouched knobs means the robust defaults."""
        if self.augment and not self.aug.enabled:
            return AugmentConfig.robust()
        return self.aug if self.augment else AugmentConfig()

    def resolved(self, *, batch_size: int, threads: int, bf16_native: bool) -> TrainConfig:
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if bf16_native else "fp32"
        return evolve(
            self,
            batch_size=batch_size,
            threads=threads,
            aug=self.effective_aug(),
            precision=precision,
        )


Recipe = dict[str, str | int | float | bool | None]
_NOT_RECIPE = frozenset(
    {"model_id", "notes", "parent_model_id", "threads", "request_id", "entry_id", "feedback_path"}
)
_FEEDBACK_RECIPE = frozenset({"feedback_holdout", "feedback_repeat"})
# Knobs added after models were shipped: left out of the recipe while off, so a run that does not
# use them keeps the recipe (and `recipe_hash`) it had before they existed.
_LATER_KNOBS = {"ema_decay": ("ema_decay",), "aug_elastic_prob": ("aug_elastic_",)}


def recipe_of(cfg: TrainConfig) -> Recipe:
    """Flat recipe for the manifest: what decides the weights (not ids, paths, notes or threads).
    The feedback knobs count only for a run that trains on corrections: a run without them has
    the recipe (and `recipe_hash`) it had before corrections existed; so with EMA and elastic
    distortion (`_LATER_KNOBS`)."""
    data = converter.unstructure(cfg)
    assert isinstance(data, dict)
    recipe: Recipe = {}
    for key, value in data.items():
        if key in _NOT_RECIPE or (key in _FEEDBACK_RECIPE and not cfg.feedback_path):
            continue
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if isinstance(sub_value, str | int | float | bool) or sub_value is None:
                    recipe[f"aug_{sub_key}"] = sub_value
        elif isinstance(value, str | int | float | bool) or value is None:
            recipe[str(key)] = value
    for switch, prefixes in _LATER_KNOBS.items():
        if not recipe.get(switch):
            recipe = {k: v for k, v in recipe.items() if not k.startswith(prefixes)}
    return recipe


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
