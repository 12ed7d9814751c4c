"""Probes and service information through real HTTP: `/healthz`, `/readyz`, `/version`, OpenAPI."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from conftest import Serve
from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ActiveModels, Readiness, VersionInfo
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.engine import EngineHolder, load_ensemble
from handwriting_ai.preprocessing import preprocess_hash
from helpers import Artifact, Client, json_of, make_settings, write_artifact


def test_healthz_is_ok(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert json_of(response) == {"status": "ok"}
    assert len(response.headers["x-request-id"]) == 32


def test_healthz_is_ok_without_a_model(serve: Serve, model_dir: Path) -> None:
    client = serve(make_settings(model_dir, ["absent_model"]))
    assert client.get("/healthz").status_code == 200


def test_readyz_is_not_ready_without_a_model(serve: Serve, model_dir: Path) -> None:
    client = serve(make_settings(model_dir, ["absent_model"]))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert structure(json_of(response), Readiness) == Readiness(
        status="not_ready",
        model_loaded=False,
        model_id=None,
        manifest_schema_version=None,
        build="dev",
        ensemble_size=0,
        model_ids=[],
    )


def test_readyz_lists_the_ensemble(serve: Serve, model_dir: Path) -> None:
    write_artifact(model_dir, "tiny_a", seed=1)
    write_artifact(model_dir, "tiny_b", seed=2)
    client = serve(make_settings(model_dir, ["tiny_a", "tiny_b"], {"APP__BUILD": "b-17"}))
    response = client.get("/readyz")
    assert response.status_code == 200
    assert structure(json_of(response), Readiness) == Readiness(
        status="ready",
        model_loaded=True,
        model_id="ensemble_2_models",
        manifest_schema_version="v1.1",
        build="b-17",
        ensemble_size=2,
        model_ids=["tiny_a", "tiny_b"],
    )


def test_readyz_single_model(client: Client, seven_model: Artifact) -> None:
    ready = structure(json_of(client.get("/readyz")), Readiness)
    assert ready.model_id == seven_model.model_id
    assert ready.ensemble_size == 1
    assert ready.model_ids == [seven_model.model_id]


def test_version_fields(serve: Serve, model_dir: Path) -> None:
    extra = {"APP__BUILD": "build-9", "APP__COMMIT": "abc1234"}
    client = serve(make_settings(model_dir, ["absent_model"], extra))
    response = client.get("/version")
    assert response.status_code == 200
    info = structure(json_of(response), VersionInfo)
    assert info.service == "handwriting-ai"
    assert info.version
    assert (info.build, info.commit) == ("build-9", "abc1234")


def test_models_active_describes_members(client: Client, seven_model: Artifact) -> None:
    response = client.get("/v1/models/active")
    assert response.status_code == 200
    active = structure(json_of(response), ActiveModels)
    assert active.model_loaded is True
    assert active.model_id == seven_model.model_id
    assert active.ensemble_size == 1
    assert active.preprocess_hash == preprocess_hash()
    assert active.tta_profile == "none"
    (member,) = active.members
    assert member.model_id == seven_model.model_id
    assert member.arch == seven_model.arch
    assert member.version == seven_model.version
    assert member.schema_version == "v1.1"
    assert member.temperature == seven_model.temperature


def test_openapi_is_served_and_lists_read(client: Client) -> None:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = json_of(response)
    assert isinstance(schema, dict)
    paths = schema["paths"]
    assert isinstance(paths, dict)
    assert "/v1/read" in paths
    assert "post" in paths["/v1/read"]
    assert {"/healthz", "/readyz", "/version", "/v1/models/active"} <= set(paths)


def test_engine_passed_in_is_served_without_loading(model_dir: Path, seven_model: Artifact) -> None:
    """`create_app(settings, engine=...)`: the app serves what it is given, reads no model dir."""
    ensemble = load_ensemble(model_dir, [seven_model.model_id], expected_hash=preprocess_hash())
    settings = make_settings(model_dir / "elsewhere", ["absent_model"])
    with TestClient(create_app(settings, engine=EngineHolder(ensemble))) as client:
        ready = structure(json_of(client.get("/readyz")), Readiness)
    assert ready.model_ids == [seven_model.model_id]
