"""The promotion gate: whether a new version may replace the one being served.

The gate compares a candidate with two bars, both lowered by the tolerance: the version served
now (`CURRENT`) and the best version of that model id ever served (the floor). Without the floor
each promotion could lose up to the tolerance, and a run of slightly worse versions would slide
without limit; with it, no version more than the tolerance below the best is ever promoted.

`GateRecord` is what the gate remembers per model id (kept in `<model_id>/GATE.json`, beside
`CURRENT`, by `reconcile.py`): that best, and the decision taken on each version, so that no
replica judges a version twice.
"""

from __future__ import annotations

from typing import Literal

from attrs import Factory, evolve, frozen

Decision = Literal["promoted", "held", "refused"]
# Accuracies are fractions of a validation set; this only absorbs float rounding in `bar - tol`.
_EPSILON = 1e-9


def should_promote(
    candidate_val_acc: float,
    active_val_acc: float | None,
    tolerance: float,
    best_val_acc: float | None = None,
) -> bool:
    """Promote unless the candidate is below the active version's val_acc, or the best ever
    served (`best_val_acc`), by more than `tolerance`. Pure: the caller supplies both bars.

    Validation accuracy is comparable across versions because every run holds out the same
    validation split (a fixed split seed), never the test set.
    """
    bars = [acc - tolerance for acc in (active_val_acc, best_val_acc) if acc is not None]
    return all(candidate_val_acc + _EPSILON >= bar for bar in bars)


def hold_reason(
    candidate_val_acc: float,
    active_val_acc: float | None,
    tolerance: float,
    best_val_acc: float | None = None,
) -> str:
    """Why `should_promote` said no, in words an operator reads in the registry listing."""
    for name, acc in (("the served version's", active_val_acc), ("the best served", best_val_acc)):
        if acc is not None and candidate_val_acc + _EPSILON < acc - tolerance:
            return (
                f"val_acc {candidate_val_acc:.4f} is below {name} {acc:.4f}"
                f" by more than the tolerance {tolerance:g}"
            )
    return ""


@frozen
class GateRecord:
    """Per model id: the best val_acc ever served, and every version's gate decision."""

    best_val_acc: float | None = None
    best_version: str | None = None
    decisions: dict[str, Decision] = Factory(dict)
    # Why a version was held or refused, for the registry listing; absent from older records.
    reasons: dict[str, str] = Factory(dict)

    def served(self, version: str, val_acc: float) -> GateRecord:
        """The record once `version` is (or was) served: the floor never goes down."""
        if self.best_val_acc is not None and val_acc <= self.best_val_acc:
            return self
        return evolve(self, best_val_acc=val_acc, best_version=version)

    def decided(self, version: str, decision: Decision, reason: str = "") -> GateRecord:
        reasons = {**self.reasons, version: reason} if reason else self.reasons
        return evolve(self, decisions={**self.decisions, version: decision}, reasons=reasons)

    def only(self, versions: set[str]) -> GateRecord:
        """Forget decisions on versions no longer stored (the best is kept regardless)."""
        kept = {v: d for v, d in self.decisions.items() if v in versions}
        if len(kept) == len(self.decisions):
            return self
        reasons = {v: r for v, r in self.reasons.items() if v in versions}
        return evolve(self, decisions=kept, reasons=reasons)
