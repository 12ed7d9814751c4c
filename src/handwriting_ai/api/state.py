"""What the handlers share, held on `app.state`: settings, the engine and the bounded executor."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from attrs import define
from litestar.datastructures import State

from handwriting_ai.errors import PredictTimeoutError
from handwriting_ai.inference.engine import EngineHolder
from handwriting_ai.settings import Settings

T = TypeVar("T")
_KEY = "handwriting_ai"


@define
class AppState:
    settings: Settings
    engine: EngineHolder
    executor: ThreadPoolExecutor | None = None

    @staticmethod
    def of(state: State) -> AppState:
        value = state.get(_KEY)
        if not isinstance(value, AppState):
            raise RuntimeError("app state is not initialised")
        return value

    def install(self, state: State) -> None:
        state[_KEY] = self

    async def run(self, fn: Callable[[], T], *, timeout_s: float) -> T:
        """Run CPU work (torch, OpenCV) off the event loop, carrying the log context along."""
        if self.executor is None:
            raise RuntimeError("executor not started")
        ctx = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, fn)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise PredictTimeoutError(
                f"Prediction did not finish within {timeout_s:g} s."
            ) from None
