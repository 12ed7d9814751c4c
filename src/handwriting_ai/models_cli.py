"""`digits models list | serve | unserve | promote | rollback | pin | unpin`: the registry over
the API (found by `HANDWRITING_API_URL`; the key in `HANDWRITING_API_KEY`, the upload key for the
actions), so it works from any machine that reaches the API, as the workers do. Beside a
`digits up` that generated the upload key, that key is used when `HANDWRITING_API_KEY` is unset.

Exit codes: 0 done (also when the action was already in effect), 1 the service refused or could
not be reached (its message on stderr).
"""

from __future__ import annotations

import json
import sys

from handwriting_ai.client import Client, ServiceError
from handwriting_ai.client.wire import ModelAction
from handwriting_ai.contracts.converter import converter
from handwriting_ai.registry.actions import RegistryChange
from handwriting_ai.registry.listing import ModelEntry, RegistryListing
from handwriting_ai.settings import Settings
from handwriting_ai.supervisor.up import ADMIN_KEY_FILE


def local_upload_key(settings: Settings) -> str:
    """The upload key `digits up` generated in the data root, if it did ("" otherwise)."""
    try:
        return (settings.app.data_root / ADMIN_KEY_FILE).read_text().strip()
    except OSError:
        return ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_listing(listing: RegistryListing) -> str:
    lines = [f"served: {', '.join(listing.served) or '-'}  (registry: {listing.store})"]
    for model in listing.models:
        lines.append("")
        lines.append(_model_line(model))
        for v in model.versions:
            job = f"  job {v.request_id} ({v.entry_id})" if v.request_id else ""
            decision = f"  gate: {v.decision}" if v.decision else ""
            reason = f"  ({v.reason})" if v.reason else ""
            corrections = (
                f"  corrections {_pct(v.feedback_acc)}" if v.feedback_acc is not None else ""
            )
            lines.append(
                f"  {v.version}  {v.status:<9}  val {_pct(v.val_acc):>7}  test"
                f" {_pct(v.test_acc):>7}{corrections}{decision}{job}{reason}"
            )
    return "\n".join(lines)


def _model_line(model: ModelEntry) -> str:
    parts = [model.model_id, "served" if model.served else "not served"]
    parts.append(f"current {model.current or '-'}")
    if model.pinned:
        parts.append(f"pinned {model.pinned}")
    if model.previous:
        parts.append(f"previous {model.previous}")
    if model.served and model.loaded_version != model.current:
        parts.append(f"this replica still serves {model.loaded_version or 'nothing'}")
    return "  ".join(parts)


def render_change(change: RegistryChange) -> str:
    what = f"{change.action} {change.model_id}"
    if change.version:
        what += f" {change.version}"
    if not change.changed:
        what += " (already so: nothing changed)"
    now = f"served: {', '.join(change.served)}; {change.model_id} current {change.current or '-'}"
    if change.pinned:
        now += f", pinned {change.pinned}"
    return f"{what}\n{now}"


def run(
    client: Client,
    action: ModelAction | None,
    model_id: str | None,
    version: str | None,
    *,
    as_json: bool,
) -> int:
    try:
        if action is None:
            listing = client.models()
            out = converter.unstructure(listing) if as_json else render_listing(listing)
        else:
            assert model_id is not None
            change = client.change_model(action, model_id, version)
            out = converter.unstructure(change) if as_json else render_change(change)
    except ServiceError as exc:
        print(f"digits models: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2) if as_json else out)
    return 0
