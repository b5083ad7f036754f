"""Felix's dataplane apply throttle: a leaky bucket (Calico's felix/throttle and the apply loop
of felix/dataplane/linux/int_dataplane.go).

Calico refills a bucket of 10 tokens once every 100 ms (a jittered ticker) and each dataplane
apply takes one, so a burst of up to 10 applies goes at once and a sustained stream of changes
is applied at most 10 times a second: under load, Felix favours reading the datastore over
re-applying the dataplane after every update. Here the refill is computed from the clock
rather than ticked (pure: the clock is passed in), without the ticker's 10 ms jitter, and the
bucket starts full where Calico's starts empty: Calico's first tick comes 100 ms after start,
long before its first datastore sync, so its first apply is not delayed either; a full bucket
keeps that without depending on how soon the sync comes.
"""

from __future__ import annotations

BUCKET_SIZE = 10  # throttle.New(10)
REFILL_INTERVAL = 0.1  # jitter.NewTicker(100*time.Millisecond, ...)


class Throttle:
    """A bucket of ``size`` tokens (full at ``start``), one added every ``interval`` seconds."""

    def __init__(self, start: float, size: int = BUCKET_SIZE, interval: float = REFILL_INTERVAL):
        self.size = size
        self.interval = interval
        self.count = size
        self._refilled = start  # the time of the last refill tick counted

    def _refill(self, now: float) -> None:
        ticks = int((now - self._refilled) / self.interval + 1e-9)  # 100.1 - 100.0 is 0.0999...
        if ticks > 0:
            self.count = min(self.size, self.count + ticks)
            self._refilled += ticks * self.interval

    def admit(self, now: float) -> bool:
        """Take a token if there is one (an apply may run now)."""
        self._refill(now)
        if self.count <= 0:
            return False
        self.count -= 1
        return True

    def next_token(self, now: float) -> float:
        """Seconds until :meth:`admit` would admit (0 when a token is there)."""
        self._refill(now)
        if self.count > 0:
            return 0.0
        return max(0.0, self._refilled + self.interval - now)
