"""The server's time when its clocks misbehave: wall-clock jumps and event-loop stalls.

Two clocks, two jobs (protocol/SPEC.md sections 6 and 12). Floating leases run on the monotonic
clock, which never jumps. Borrow periods are UTC wall time, because a laptop off the network has
nothing else to agree on; but the wall clock can jump (an admin's typo, a dead RTC battery, an NTP
step, a VM restored from a snapshot), and a jump of +30 days would end every borrow at once.

``WallGuard`` checks the wall clock against an *anchor*: the wall time when the server started
plus the time elapsed since on a clock that never jumps. While the two agree within a tolerance the
wall clock is used as it is (small NTP steps pass); when they disagree the wall clock is *suspect*
and the anchored time is used instead, for borrow dates and ends, the key's expiry and history
stamps, until the wall clock agrees again or the server restarts. So a wall jump, forward or back,
neither ends a borrow early nor issues a file with wrong dates.

``StallWatch`` notices that the event loop did not run for a while (the process was stopped with
SIGSTOP, its VM paused, its host swapping): the gap between two turns of the loop is far longer
than the housekeeping interval that bounds it. Nobody could renew during that time, so the server
gives it back: every lease is extended by the gap before anything expires (``SeatPool.postpone``).

Pure: both clocks are read by the adapter and passed in.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STALL_THRESHOLD", "WALL_TOLERANCE", "StallWatch", "WallGuard"]

#: How far the wall clock may be off the anchored time and still be believed (seconds). NTP steps
#: at boot and a VM's clock catching up after a pause are smaller; jumps of hours are not.
WALL_TOLERANCE: Final = 300.0
#: A gap at least this long between two turns of the server's event loop is a stall (seconds);
#: the housekeeping sweep runs every second, so a healthy loop never leaves such a gap.
STALL_THRESHOLD: Final = 3.0


class WallGuard:
    """UTC time from the wall clock, checked against an anchor that does not jump."""

    __slots__ = ("_offset", "changed", "skew", "suspect", "tolerance")

    def __init__(self, tolerance: float = WALL_TOLERANCE) -> None:
        self.tolerance = tolerance
        self._offset: float | None = None
        """wall - uptime at the first reading: the anchor."""
        self.suspect = False
        """The wall clock disagrees with the anchor; the anchored time is in use."""
        self.skew = 0.0
        """wall - anchored time at the last change of ``suspect`` (or of the jump's size)."""
        self.changed = False
        """Set when ``suspect`` or the jump changed; the adapter logs it and clears this."""

    def now(self, uptime: float, wall: float) -> float:
        """The UTC time to use, given the wall clock and a clock that never jumps (any origin)."""
        offset = self._offset
        if offset is None:
            self._offset = wall - uptime
            return wall
        anchored = offset + uptime
        skew = wall - anchored
        tol = self.tolerance
        if -tol <= skew <= tol:
            if self.suspect:
                self.suspect, self.skew, self.changed = False, skew, True
            return wall
        if not self.suspect or abs(skew - self.skew) > tol:
            self.suspect, self.skew, self.changed = True, skew, True
        return anchored

    def anchored(self, uptime: float) -> float | None:
        """The anchored time alone (None before the first reading)."""
        return None if self._offset is None else self._offset + uptime


class StallWatch:
    """Notices gaps between turns of the event loop (see the module docstring)."""

    __slots__ = ("_seen", "threshold")

    def __init__(self, threshold: float = STALL_THRESHOLD) -> None:
        self.threshold = threshold
        self._seen: float | None = None

    def gap(self, now: float) -> float:
        """Call at every turn with the monotonic time; the stall just ended (its length in
        seconds), or 0.0 when there was none."""
        seen = self._seen
        self._seen = now
        if seen is not None and now - seen >= self.threshold:
            return now - seen
        return 0.0
