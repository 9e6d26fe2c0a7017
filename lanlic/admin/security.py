"""Sessions, CSRF tokens and the login throttle of the admin page: plain objects, time passed in.

* A **session** is a random token in an HttpOnly, SameSite=Strict cookie; the server keeps only
  its SHA-256, so a lookup leaks nothing through timing. It ends after ``SESSION_IDLE`` seconds
  unused or ``SESSION_LIFETIME`` seconds in all, at logout, and when the password changes.
* Each session has its own **CSRF token**, handed to the page in JSON (never in a cookie) and
  required in the ``X-CSRF-Token`` header of every request that changes something. A page of
  another site can make the browser send the cookie (SameSite already stops most of that), but it
  cannot read the token.
* The **throttle** slows down guessing per client address: the first ``FREE_FAILURES`` wrong
  passwords cost nothing more than scrypt's own time; after that each one doubles the wait
  before the next try is even looked at, from ``BASE_DELAY`` up to ``MAX_DELAY`` seconds. A
  success forgets the address. A try is counted as a failure *before* its password is checked
  (``attempt``), in the same step that checks the wait: tries sent all at once are counted one
  after another, so they meet the same waits as tries sent one by one.

Times are the event loop's monotonic seconds, passed in, so tests move them by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["AdminSession", "LoginThrottle", "Sessions", "same_token"]

SESSION_IDLE = 8 * 3600.0
SESSION_LIFETIME = 24 * 3600.0
MAX_SESSIONS = 256
FREE_FAILURES = 2
BASE_DELAY = 1.0
MAX_DELAY = 300.0
#: An address with no failed login for this long is forgotten.
FORGET_AFTER = 3600.0
MAX_ADDRESSES = 10_000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def same_token(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


@dataclass(slots=True)
class AdminSession:
    user: str
    """The name given at login, written to the history with each action."""
    address: str
    """The client address at login."""
    csrf: str
    """The token every state-changing request must carry in ``X-CSRF-Token``."""
    created: float
    seen: float
    open: bool
    """Made with no password (loopback only, when none is set)."""


class Sessions:
    """The live sessions, by the SHA-256 of their cookie token."""

    def __init__(
        self,
        idle: float = SESSION_IDLE,
        lifetime: float = SESSION_LIFETIME,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._by_digest: dict[str, AdminSession] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def create(
        self, user: str, address: str, now: float, *, open: bool = False
    ) -> tuple[str, AdminSession]:
        """A new session; returns the cookie token (kept nowhere here) and the session."""
        self._prune(now)
        while len(self._by_digest) >= self.max_sessions:  # the oldest goes first
            oldest = min(self._by_digest, key=lambda d: self._by_digest[d].seen)
            del self._by_digest[oldest]
        token = secrets.token_urlsafe(32)
        session = AdminSession(user, address, secrets.token_urlsafe(32), now, now, open)
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None, now: float) -> AdminSession | None:
        """The session of a cookie token, or None (unknown, or idle or old too long)."""
        if not token:
            return None
        digest = _digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if now - session.seen > self.idle or now - session.created > self.lifetime:
            del self._by_digest[digest]
            return None
        session.seen = now
        return session

    def drop(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def clear(self) -> None:
        self._by_digest.clear()

    def _prune(self, now: float) -> None:
        for digest, s in list(self._by_digest.items()):
            if now - s.seen > self.idle or now - s.created > self.lifetime:
                del self._by_digest[digest]


class LoginThrottle:
    """Exponential delay per client address after failed logins (see the module docstring)."""

    def __init__(
        self,
        free: int = FREE_FAILURES,
        base: float = BASE_DELAY,
        cap: float = MAX_DELAY,
        forget_after: float = FORGET_AFTER,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._failures: dict[str, tuple[int, float]] = {}
        """address -> (consecutive failures, when the next try is allowed)."""

    def wait(self, address: str, now: float) -> float:
        """Seconds ``address`` must still wait before its next try is looked at (0: go)."""
        entry = self._failures.get(address)
        return 0.0 if entry is None else max(0.0, entry[1] - now)

    def attempt(self, address: str, now: float) -> float:
        """Check and count one try in a single step: the seconds ``address`` must still wait
        (nothing counted), or 0.0 with the try already counted as a failure (``succeeded``
        forgets it). Counting before the password is checked means tries that arrive together
        cannot all pass the check while the first one is still being verified."""
        wait = self.wait(address, now)
        if wait > 0:
            return wait
        self.failed(address, now)
        return 0.0

    def failed(self, address: str, now: float) -> float:
        """Count a wrong password; return the delay now imposed on ``address``."""
        count = self._failures.get(address, (0, now))[0] + 1
        excess = count - self.free
        delay = 0.0 if excess <= 0 else min(self.cap, self.base * 2.0 ** (excess - 1))
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            self._prune(now)
        self._failures[address] = (count, now + delay)
        return delay

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _prune(self, now: float) -> None:
        for address, (_, until) in list(self._failures.items()):
            if now - until > self.forget_after:
                del self._failures[address]
        while len(self._failures) >= self.max_addresses:  # a flood of addresses: oldest first
            del self._failures[min(self._failures, key=lambda a: self._failures[a][1])]
