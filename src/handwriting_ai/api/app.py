"""`create_app(settings, *, engine=None, redis=None)`: the Litestar app, outside parts passed in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import cv2
import torch
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.aio import cancel_and_wait
from handwriting_ai.api import openapi, web
from handwriting_ai.api import registry as registry_api
from handwriting_ai.api.admin import admin_ping, upload_model
from handwriting_ai.api.admission import ReadAdmission
from handwriting_ai.api.errors import EXCEPTION_HANDLERS
from handwriting_ai.api.event_hub import EventHub
from handwriting_ai.api.feedback import submit_feedback
from handwriting_ai.api.health import (
    active_models,
    healthz,
    package_version,
    prometheus_metrics,
    readyz,
    version_info,
)
from handwriting_ai.api.read import FORM_PART_LIMIT, read
from handwriting_ai.api.request_id import RequestIdMiddleware
from handwriting_ai.api.samples import SampleKeeper
from handwriting_ai.api.shed import ShedReads
from handwriting_ai.api.state import AppState, connect_redis
from handwriting_ai.api.train import cancel_train, submit_train, train_events, train_status
from handwriting_ai.contracts.events import ModelChanged, TrainCompleted
from handwriting_ai.errors import AppError
from handwriting_ai.inference.engine import EngineHolder
from handwriting_ai.inference.reconcile import Reconciler, reconcile_forever
from handwriting_ai.inference.store import bundled_model_dir, seed_models
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.registry.redis_state import RedisState, connect_sync
from handwriting_ai.registry.state import DirState, RegistryState
from handwriting_ai.settings import Settings
from handwriting_ai.streams.reload_consumer import ReloadConsumer

log = get_logger("handwriting_ai.api")
_FORM_OVERHEAD_BYTES = 64 * 1024
RELOAD_TIMEOUT_S = 300.0
PRIME_TIMEOUT_S = 3.0
TASK_STOP_S = 5.0  # background tasks at shutdown; then the app goes on without them


def _seed(settings: Settings) -> None:
    active = settings.digits.active_model
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    for model_id in seed_models(settings.model_dir, active, bundled_model_dir()):
        log.info("model_seeded", model_id=model_id, model_dir=str(settings.model_dir))


def _registry(settings: Settings) -> RegistryState:
    """Redis when configured (replicas then need no shared volume), else the model directory."""
    local = DirState(settings.model_dir)
    if settings.redis_url is None:
        return local
    return RedisState(connect_sync(settings.redis_url), local, events_maxlen=settings.events.maxlen)


async def _start_reconciling(state: AppState) -> list[asyncio.Task[None]]:
    """Reconcile once before serving, then every interval and on each registry event.

    Events only wake the reconciler: what to serve is read from the registry, so an event missed
    while down, or a reload that failed or timed out, is made good by a later pass.
    """
    settings = state.settings
    assert state.registry is not None
    reconciler = Reconciler(
        engine=state.engine,
        state=state.registry,
        model_dir=settings.model_dir,
        default_served=settings.digits.active_model,
        tolerance=settings.digits.promotion_tolerance,
        expected_hash=preprocess_hash(),
        temperature_override=settings.digits.ensemble_temperature_override,
        backend=settings.digits.backend,
        feedback=state.registry.corrections if isinstance(state.registry, RedisState) else None,
    )
    wake = state.wake = asyncio.Event()

    async def reconcile_once() -> None:
        try:
            outcomes = await state.run(reconciler.reconcile, timeout_s=RELOAD_TIMEOUT_S)
        except AppError as exc:  # a timeout: the next pass tries again
            log.error("reconcile_timed_out", reason=exc.message)
        else:
            state.metrics.reconciled(outcomes)

    async def on_event(event: TrainCompleted | ModelChanged) -> None:
        wake.set()

    await reconcile_once()
    if state.engine.ensemble is None:
        log.error("no_model_loaded", model_dir=str(settings.model_dir))
    interval_s = settings.digits.reconcile_interval_s
    loop = reconcile_forever(reconcile_once, interval_s=interval_s, wake=wake)
    tasks = [asyncio.create_task(loop, name="reconcile")]
    if state.redis is not None:
        consumer = ReloadConsumer(state.redis, on_event)
        # Pin the start before serving, so an event published right after start-up wakes us;
        # with Redis down the consumer pins it itself once Redis answers.
        try:
            await asyncio.wait_for(consumer.prime(), PRIME_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("reload_consumer_waiting", error=str(exc))
        tasks.append(asyncio.create_task(consumer.run(), name="reload-consumer"))
    return tasks


def create_app(
    settings: Settings, *, engine: EngineHolder | None = None, redis: Redis | None = None
) -> Litestar:
    state = AppState(settings=settings, engine=engine or EngineHolder(), redis=redis)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # One torch/OpenCV thread per request; the executor size is the parallelism.
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        threads = settings.app.executor_threads
        state.reads = ReadAdmission(
            threads,
            settings.digits.read_queue,
            inline_max_s=settings.digits.inline_read_ms / 1000,
        )
        state.admin = ThreadPoolExecutor(max_workers=2, thread_name_prefix="admin")
        own_redis = redis is None and settings.redis_url is not None
        if own_redis and settings.redis_url is not None:
            state.redis = connect_redis(settings.redis_url)
        if state.redis is not None:
            state.events = EventHub(state.redis, max_streams=settings.events.max_streams)
            await state.events.start()
            state.samples = SampleKeeper(state.redis, ttl_s=settings.feedback.sample_ttl_s)
        tasks: list[asyncio.Task[None]] = []
        try:
            state.registry = _registry(settings)
            if engine is None:  # an engine passed in is served as given: no model dir is read
                await state.run(lambda: _seed(settings), timeout_s=600)
                tasks = await _start_reconciling(state)
            ensemble = state.engine.ensemble
            log.info(
                "api_started",
                threads=threads,
                model_id=None if ensemble is None else ensemble.model_id,
                preprocess_hash=preprocess_hash(),
                redis=state.redis is not None,
            )
            yield
        finally:
            await cancel_and_wait(tasks, timeout_s=TASK_STOP_S)
            if isinstance(state.registry, RedisState):
                state.registry.redis.close()
            state.registry = state.wake = None
            if state.samples is not None:
                await state.samples.stop()
                state.samples = None
            if state.events is not None:
                await state.events.stop()
                state.events = None
            if own_redis and state.redis is not None:
                await state.redis.aclose()
                state.redis = None
            state.reads.shutdown()
            state.admin.shutdown(wait=False, cancel_futures=True)
            state.reads = state.admin = None

    app = Litestar(
        route_handlers=[
            read,
            healthz,
            readyz,
            version_info,
            prometheus_metrics,
            active_models,
            *registry_api.ROUTES,
            upload_model,
            admin_ping,
            submit_train,
            train_status,
            train_events,
            cancel_train,
            submit_feedback,
            *web.ROUTES,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=int(settings.digits.max_image_mb * 1024 * 1024)
        + _FORM_OVERHEAD_BYTES,
        multipart_form_part_limit=FORM_PART_LIMIT,
        openapi_config=OpenAPIConfig(
            title="handwriting-ai",
            version=package_version(),
            description=openapi.DESCRIPTION,
            components=openapi.components(),
        ),
        logging_config=None,
    )
    state.install(app.state)
    state.metrics.watch(state.engine, lambda: state.reads, lambda: state.events)
    # Wrapped outside the router so that 404/405 answers carry a request id too.
    app.asgi_handler = RequestIdMiddleware(ShedReads(app.asgi_handler, state))
    return app
