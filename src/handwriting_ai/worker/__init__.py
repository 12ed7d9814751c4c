"""Training workers: consume `digits:train` in group `digits-workers`, train in subprocess slots."""

from handwriting_ai.worker.consumer import Worker
from handwriting_ai.worker.main import main
from handwriting_ai.worker.serve import run_worker, serve_worker

__all__ = ["Worker", "main", "run_worker", "serve_worker"]
