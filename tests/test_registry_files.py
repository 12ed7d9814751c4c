"""Without Redis the model registry lives in the model directory's files: the same admin routes
work on one replica (or replicas sharing the volume), and what they change survives a restart."""

from __future__ import annotations

import json
from pathlib import Path

from litestar.testing import TestClient

from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ActiveModels
from handwriting_ai.contracts.converter import structure
from helpers import Client, json_of, make_settings, write_artifact

KEY = "files-key"
V1, V2 = "20250101T000000Z", "20250102T000000Z"


def _served(client: Client) -> dict[str, str]:
    active = structure(json_of(client.get("/v1/models/active")), ActiveModels)
    return {m.model_id: m.version for m in active.members}


def test_serve_rollback_and_pin_in_the_model_directory(model_dir: Path) -> None:
    write_artifact(model_dir, "tiny_a", seed=1, prefer=3, version=V1)
    write_artifact(model_dir, "tiny_a", seed=2, prefer=8, version=V2)
    write_artifact(model_dir, "tiny_b", seed=3, prefer=5, version=V1)
    settings = make_settings(
        model_dir, ["tiny_a"], {"SECURITY__ADMIN_KEY": KEY, "DIGITS__RECONCILE_INTERVAL_S": "0.1"}
    )
    headers = {"X-Api-Key": KEY}
    with TestClient(create_app(settings)) as client:
        assert _served(client) == {"tiny_a": V2}
        assert client.post("/v1/admin/models/tiny_b/serve", headers=headers).status_code == 200
        promoted = client.post(f"/v1/admin/models/tiny_a/versions/{V1}/promote", headers=headers)
        assert promoted.status_code == 200
        assert client.post("/v1/admin/models/tiny_a/pin", headers=headers).status_code == 200
        listing = json_of(client.get("/v1/models"))
        assert isinstance(listing, dict)
        assert listing["store"] == "directory"
    assert json.loads((model_dir / "SERVED.json").read_text()) == ["tiny_a", "tiny_b"]
    assert (model_dir / "tiny_a" / "CURRENT").read_text().strip() == V1
    registry = json.loads((model_dir / "tiny_a" / "REGISTRY.json").read_text())
    assert registry == {"pinned": V1, "history": [V2]}
    with TestClient(create_app(settings)) as client:  # a restart keeps all of it
        assert _served(client) == {"tiny_a": V1, "tiny_b": V1}
        rolled = client.post("/v1/admin/models/tiny_a/rollback", headers=headers)
        assert json_of(rolled) == {
            "action": "rolled_back",
            "changed": True,
            "model_id": "tiny_a",
            "served": ["tiny_a", "tiny_b"],
            "version": V2,
            "current": V2,
            "pinned": V2,
            "previous": None,
        }
