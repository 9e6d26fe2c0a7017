"""The seat policy file in the server's data folder, and what the admin command does with it.

``policy.toml`` holds the policy (lanlic.core.policy says what it means). ``lanlic admin policy
--load FILE`` validates the new file, shows what it changes, and puts it in place atomically; the
running server notices the new file within a second (``PolicyWatch``), checks it against its
network key and applies it to new requests without a restart. Next to it the server keeps
``policy.state.json``: the key's products and seats (so the admin command validates against the
key too) and whether the file in place is the one in force, or why it was refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanlic import osdeps
from lanlic.core.policy import NO_POLICY, Policy, PolicyError, diff, parse

__all__ = ["POLICY_FILE", "STATE_FILE", "LoadPlan", "PolicyWatch", "install", "plan", "read"]

POLICY_FILE = "policy.toml"
STATE_FILE = "policy.state.json"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read(folder: Path, products: Mapping[str, int] | None = None) -> Policy:
    """The policy file of ``folder`` (the empty policy if there is none). PolicyError names the
    file's line and the reason; OSError if it cannot be read."""
    path = folder / POLICY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NO_POLICY
    return parse(text, products)


def state(folder: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def key_products(folder: Path) -> dict[str, int] | None:
    """The network key's products and seats as the server last wrote them (None: unknown)."""
    products = state(folder).get("products")
    if isinstance(products, dict) and all(type(v) is int for v in products.values()):
        return {str(k): int(v) for k, v in products.items()}
    return None


@dataclass(frozen=True, slots=True)
class LoadPlan:
    policy: Policy
    changes: list[str]
    """``- line`` / ``+ line`` for each fact dropped or added (lanlic.core.policy.diff)."""
    checked_against_key: bool


def plan(folder: Path, text: str) -> LoadPlan:
    """Validate ``text`` as the new policy of ``folder``'s server and say what it changes.
    Raises PolicyError (line and reason); nothing is written."""
    products = key_products(folder)
    new = parse(text, products)
    try:
        old = read(folder)
    except (PolicyError, OSError):
        old = NO_POLICY
    return LoadPlan(new, diff(old, new), products is not None)


def install(folder: Path, text: str) -> None:
    """Put ``text`` in place as the policy file, whole or not at all (write, fsync, rename),
    private like every file of the data folder."""
    osdeps.write_atomic(folder / POLICY_FILE, text.encode("utf-8"))


def write_state(folder: Path, data: dict[str, Any]) -> None:
    """The server's word on the policy file, for the admin commands: private (0600) like every
    file of the data folder, and whole or not at all."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    osdeps.write_atomic(folder / STATE_FILE, text.encode("utf-8"))


class PolicyWatch:
    """Notices a changed policy file (size, mtime or content) and reads it for the server."""

    def __init__(self, folder: Path, products: Mapping[str, int]) -> None:
        self.folder = folder
        self.products = dict(products)
        self._seen: tuple[int, int] | None = None
        self.applied = ""
        """The digest of the text in force ("" for none)."""

    def check(self) -> Policy | PolicyError | None:
        """The new policy if the file changed (the empty one if it was deleted), the error if
        the changed file is invalid, None if nothing changed. Blocking: run off the loop."""
        path = self.folder / POLICY_FILE
        try:
            st = path.stat()
            seen = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = (0, -1)
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            text = path.read_text(encoding="utf-8") if seen[1] >= 0 else ""
        except OSError as exc:
            return PolicyError(0, f"cannot read {path}: {exc}")
        if _digest(text) == self.applied:
            return None
        try:
            policy = parse(text, self.products)
        except PolicyError as exc:
            self._record(error=f"{POLICY_FILE}: {exc}")
            return exc
        self.applied = _digest(text)
        self._record(error="")
        return policy

    def _record(self, error: str) -> None:
        with contextlib.suppress(OSError):
            write_state(
                self.folder,
                {"products": self.products, "applied": self.applied, "error": error},
            )

    def in_force(self, text: str) -> bool:
        return _digest(text) == self.applied


# ------------------------------------------------------------------ the admin command's work


def load_command(folder: Path, text: str, who: str, host: str) -> LoadPlan:
    """``lanlic admin policy --load``: validate ``text`` (PolicyError: nothing written), put it
    in place for the running server to apply, and write the change to the history with who
    made it. Returns the plan (what changed)."""
    from lanlic.store import Store

    result = plan(folder, text)
    install(folder, text)
    store = Store(folder / "lanlic.db")
    try:
        import time

        detail = "; ".join(result.changes) or "no change"
        store.append_history_rows([(time.time(), "policy", "", who, host, detail[:2000])])
    finally:
        store.close()
    return result


def show_command(folder: Path) -> dict[str, Any]:
    """``lanlic admin policy --show``: the policy file, whether the server has it in force,
    and the policy as data. PolicyError if the file in place is invalid."""
    path = folder / POLICY_FILE
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    policy = parse(text, key_products(folder))
    st = state(folder)
    applied = st.get("applied")
    return {
        "file": str(path),
        "text": text,
        "in_force": applied == _digest(text) if applied is not None else None,
        "error": st.get("error") or "",
        "lines": policy.lines(),
        "policy": policy.to_json(),
    }
