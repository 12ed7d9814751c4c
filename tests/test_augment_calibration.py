"""Augmentation knobs change the data (deterministically), and calibration lowers NLL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attrs import evolve

from handwriting_ai.data.synthetic import render_digits
from handwriting_ai.training.augment import _elastic, augment_batch
from handwriting_ai.training.calibrate import expected_calibration_error, fit_temperature, nll
from handwriting_ai.training.config import AugmentConfig, Morph, TrainConfig, recipe_hash, recipe_of


def batch() -> torch.Tensor:
    images, _ = render_digits(32, seed=5)
    return torch.from_numpy(images).unsqueeze(1).float() / 255.0


KNOBS = {
    "rotate_deg": AugmentConfig(rotate_deg=15.0),
    "scale": AugmentConfig(scale=0.2),
    "shift_px": AugmentConfig(shift_px=2.0),
    "shear_deg": AugmentConfig(shear_deg=10.0),
    "noise_prob": AugmentConfig(noise_prob=1.0),
    "dots_prob": AugmentConfig(dots_prob=1.0),
    "blur_prob": AugmentConfig(blur_prob=1.0),
    "elastic_prob": AugmentConfig(elastic_prob=1.0),
}


def test_augmentation_is_off_by_default() -> None:
    x = batch()
    assert torch.equal(
        augment_batch(x.clone(), AugmentConfig(), torch.Generator().manual_seed(0)), x
    )
    assert TrainConfig(model_id="m").effective_aug() == AugmentConfig()


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_each_knob_changes_the_data(knob: str) -> None:
    x = batch()
    cfg = KNOBS[knob]
    out = augment_batch(x.clone(), cfg, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("morph", ["erode", "dilate", "both"])
def test_morphology_changes_stroke_mass(morph: Morph) -> None:
    x = batch()
    cfg = AugmentConfig(morph_prob=1.0, morph=morph)
    out = augment_batch(x.clone(), cfg, torch.Generator().manual_seed(0))
    if morph == "dilate":
        assert float(out.sum()) > float(x.sum())
    elif morph == "erode":
        assert float(out.sum()) < float(x.sum())
    else:
        assert not torch.allclose(out, x)


def test_augmentation_is_deterministic_under_the_seed() -> None:
    cfg = AugmentConfig.robust()
    a = augment_batch(batch(), cfg, torch.Generator().manual_seed(1))
    b = augment_batch(batch(), cfg, torch.Generator().manual_seed(1))
    c = augment_batch(batch(), cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_true_means_robust_defaults_in_the_recipe() -> None:
    cfg = TrainConfig(model_id="m", augment=True)
    assert cfg.effective_aug() == AugmentConfig.robust()
    resolved = cfg.resolved(batch_size=128, threads=2, bf16_native=False)
    recipe = recipe_of(resolved)
    assert recipe["aug_rotate_deg"] == AugmentConfig.robust().rotate_deg
    assert recipe["precision"] == "fp32"
    assert "model_id" not in recipe
    assert "notes" not in recipe
    assert recipe_hash(recipe) != recipe_hash(
        recipe_of(TrainConfig(model_id="m").resolved(batch_size=128, threads=2, bf16_native=False))
    )


def test_elastic_knobs_enter_the_recipe_only_when_on() -> None:
    plain = TrainConfig(model_id="m", augment=True)
    elastic = TrainConfig(
        model_id="m", augment=True, aug=evolve(AugmentConfig.robust(), elastic_prob=0.5)
    )
    plain_recipe = recipe_of(plain.resolved(batch_size=128, threads=2, bf16_native=False))
    elastic_recipe = recipe_of(elastic.resolved(batch_size=128, threads=2, bf16_native=False))
    assert not any(k.startswith("aug_elastic") for k in plain_recipe)
    assert elastic_recipe["aug_elastic_prob"] == 0.5
    assert elastic_recipe["aug_elastic_px"] == AugmentConfig().elastic_px
    assert {k: v for k, v in elastic_recipe.items() if not k.startswith("aug_elastic")} == (
        plain_recipe
    )


def test_elastic_distortion_is_smooth_and_small() -> None:
    """Neighbouring pixels move together (a wobble, not noise) by about `elastic_px`."""
    x = batch()
    warped = augment_batch(
        x.clone(), AugmentConfig(elastic_prob=1.0, elastic_px=1.0), torch.Generator().manual_seed(3)
    )
    # Ink is moved, not created or destroyed wholesale.
    assert float(warped.sum()) == pytest.approx(float(x.sum()), rel=0.1)
    assert float((warped - x).abs().mean()) < 0.1
    n = 16
    identity = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, 28, 28], align_corners=False)
    cfg = AugmentConfig(elastic_prob=1.0, elastic_px=1.0)
    moved = (_elastic(identity, cfg, torch.Generator().manual_seed(4)) - identity) * 14  # px
    assert float(moved.square().mean().sqrt()) == pytest.approx(1.0, rel=0.05)
    # Each pixel's neighbour moves almost the same way: a smooth field, not per-pixel noise.
    here, right = moved[:, :, :-1].flatten(), moved[:, :, 1:].flatten()
    assert float(torch.corrcoef(torch.stack([here, right]))[0, 1]) > 0.9


def test_temperature_scaling_lowers_nll_of_an_overconfident_model() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (4000,), generator=gen)
    logits = torch.randn(4000, 10, generator=gen)
    logits[torch.arange(4000), labels] += 2.5
    overconfident = logits * 5  # right ~85% of the time, but sure of itself every time
    t = fit_temperature(overconfident, labels)
    assert t > 2.0
    assert nll(overconfident, labels, t) < 0.85 * nll(overconfident, labels)
    # ... and the fitted T is the minimum, not merely an improvement.
    assert nll(overconfident, labels, t) <= nll(overconfident, labels, t * 1.1)
    assert nll(overconfident, labels, t) <= nll(overconfident, labels, t / 1.1)
    probs_before = torch.softmax(overconfident, 1)
    probs_after = torch.softmax(overconfident / t, 1)
    assert expected_calibration_error(probs_after, labels) < 0.5 * expected_calibration_error(
        probs_before, labels
    )


def test_temperature_never_makes_a_calibrated_model_worse() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    logits = torch.randn(2000, 10, generator=gen)
    t = fit_temperature(logits, labels)
    assert nll(logits, labels, t) <= nll(logits, labels, 1.0)
