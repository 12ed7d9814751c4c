"""The promotion gate: whether a new version may replace the one being served."""

from __future__ import annotations


def should_promote(
    candidate_val_acc: float, active_val_acc: float | None, tolerance: float
) -> bool:
    """Promote unless the candidate is worse than the active version by more than `tolerance`.

    Validation accuracy is comparable across versions because every run holds out the same
    validation split (a fixed split seed), never the test set.
    """
    return active_val_acc is None or candidate_val_acc >= active_val_acc - tolerance
