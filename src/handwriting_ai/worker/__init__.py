"""Training workers: consume `digits:train` in group `digits-workers`, train in subprocess slots."""

from handwriting_ai.worker.consumer import Worker, run_worker, serve_worker
from handwriting_ai.worker.main import main

__all__ = ["Worker", "main", "run_worker", "serve_worker"]
