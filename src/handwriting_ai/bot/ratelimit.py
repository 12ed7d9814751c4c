"""A per-user sliding-window limit (for `/train`): at most `limit` in any `window_s`. Pure; the
clock is passed in. In memory: a restarted bot forgets, which errs on the user's side."""

from __future__ import annotations

from collections import deque


class RateLimiter:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit  # 0: no limit
        self.window_s = window_s
        self._times: dict[int, deque[float]] = {}

    def acquire(self, user_id: int, now: float) -> float | None:
        """Take one use: None when allowed, else the seconds until the next one is."""
        if self.limit <= 0:
            return None
        times = self._times.setdefault(user_id, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return times[0] + self.window_s - now
        times.append(now)
        return None

    def release(self, user_id: int, now: float) -> None:
        """Give back the use taken at `now` (the job was not accepted)."""
        times = self._times.get(user_id)
        if times and now in times:
            times.remove(now)
