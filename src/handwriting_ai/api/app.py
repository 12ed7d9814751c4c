"""`create_app(settings, *, engine=None)`: the Litestar application, its outside parts passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import cv2
import torch
from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from handwriting_ai.api.admin import upload_model
from handwriting_ai.api.errors import EXCEPTION_HANDLERS
from handwriting_ai.api.health import active_models, healthz, package_version, readyz, version_info
from handwriting_ai.api.read import read
from handwriting_ai.api.request_id import RequestIdMiddleware
from handwriting_ai.api.state import AppState
from handwriting_ai.inference.engine import EngineHolder, load_ensemble
from handwriting_ai.inference.store import bundled_model_dir, seed_models
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.settings import Settings

log = get_logger("handwriting_ai.api")
_FORM_OVERHEAD_BYTES = 64 * 1024


def _load(settings: Settings) -> EngineHolder:
    active = settings.digits.active_model
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    for model_id in seed_models(settings.model_dir, active, bundled_model_dir()):
        log.info("model_seeded", model_id=model_id, model_dir=str(settings.model_dir))
    ensemble = load_ensemble(
        settings.model_dir,
        settings.digits.active_model,
        expected_hash=preprocess_hash(),
        temperature_override=settings.digits.ensemble_temperature_override,
    )
    if ensemble is None:
        log.error(
            "no_model_loaded",
            model_dir=str(settings.model_dir),
            active=list(settings.digits.active_model),
        )
    return EngineHolder(ensemble)


def create_app(settings: Settings, *, engine: EngineHolder | None = None) -> Litestar:
    state = AppState(settings=settings, engine=engine or EngineHolder())

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # One torch/OpenCV thread per request; the executor size is the parallelism.
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        threads = settings.app.executor_threads
        state.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read")
        try:
            if engine is None:
                loaded = await state.run(lambda: _load(settings), timeout_s=600)
                state.engine.swap(loaded.ensemble)
            ensemble = state.engine.ensemble
            log.info(
                "api_started",
                threads=threads,
                model_id=None if ensemble is None else ensemble.model_id,
                preprocess_hash=preprocess_hash(),
            )
            yield
        finally:
            state.executor.shutdown(wait=False, cancel_futures=True)
            state.executor = None

    app = Litestar(
        route_handlers=[read, healthz, readyz, version_info, active_models, upload_model],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=int(settings.digits.max_image_mb * 1024 * 1024)
        + _FORM_OVERHEAD_BYTES,
        multipart_form_part_limit=16,
        openapi_config=OpenAPIConfig(title="handwriting-ai", version=package_version()),
        logging_config=None,
    )
    state.install(app.state)
    # Wrapped outside the router so that 404/405 answers carry a request id too.
    app.asgi_handler = RequestIdMiddleware(app.asgi_handler)
    return app
