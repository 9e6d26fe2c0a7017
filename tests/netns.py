"""Network namespaces for tests: two test hosts joined by a veth pair (needs root and iproute2).

Made and removed by the tests themselves; nothing here touches the machine's own interfaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

CLI = [sys.executable, "-m", "lanlic.cli"]


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2) to create network namespaces"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Netns:
    """Two namespaces, A (10.99.0.1) and B (10.99.0.2), joined by a veth pair; each has lo."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"lanlic-{tag}-a", f"lanlic-{tag}-b"
        self.made: list[str] = []

    def make(self) -> None:
        for ns in (self.a, self.b):
            ip("netns", "add", ns)
            self.made.append(ns)
        ip(
            "link",
            "add",
            "va",
            "netns",
            self.a,
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            self.b,
        )
        ip("-n", self.a, "addr", "add", "10.99.0.1/24", "dev", "va")
        ip("-n", self.b, "addr", "add", "10.99.0.2/24", "dev", "vb")
        for ns, dev in ((self.a, "va"), (self.b, "vb")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", self.a, "route", "add", "default", "via", "10.99.0.2")
        ip("-n", self.b, "route", "add", "default", "via", "10.99.0.1")

    def remove(self) -> None:
        for ns in self.made:  # deleting a namespace removes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)

    def cmd(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *CLI, *args]
