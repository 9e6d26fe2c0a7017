"""``lanlic service``: run the licence server as the OS's service.

* Linux: a systemd unit (``print-unit``), sandboxed: a dynamic user, ``StateDirectory`` for the
  data folder (``/var/lib/lanlic``), ``ConfigurationDirectory`` for the key files
  (``/etc/lanlic``), ``ProtectSystem=strict``; the log is the journal (``journalctl -u lanlic``).
* macOS: a launchd daemon (``print-unit`` prints its plist), data in
  ``/Library/Application Support/lanlic``, log in ``/Library/Logs/lanlic/lanlic.log``.
* Windows: a service on pywin32's service framework (``pip install lanlic[windows]``):
  ``install`` registers it (started at boot), ``remove`` deletes it; data in
  ``%PROGRAMDATA%\\lanlic``, log in ``%PROGRAMDATA%\\lanlic\\lanlic.log``. Its stop request
  reaches the server through ``osdeps.request_stop``.

``install`` and ``remove`` on Linux and macOS write or delete the unit file and print the one
command that (de)activates it, so the administrator sees what runs as root.
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import sys
from pathlib import Path
from typing import Any, Final

from lanlic.errors import LanlicError

__all__ = ["ServiceError", "add_parser", "launchd_plist", "run", "systemd_unit"]

NAME: Final = "lanlic"
LAUNCHD_LABEL: Final = "org.lanlic.server"
SYSTEMD_PATH: Final = Path("/etc/systemd/system/lanlic.service")
LAUNCHD_PATH: Final = Path(f"/Library/LaunchDaemons/{LAUNCHD_LABEL}.plist")
MACOS_DATA: Final = Path("/Library/Application Support/lanlic")
MACOS_LOG: Final = Path("/Library/Logs/lanlic/lanlic.log")
#: The Windows service keeps its ``lanlic serve`` arguments here, in its data folder.
WINDOWS_ARGS_FILE: Final = "service.json"
SYSTEMS: Final = ("linux", "macos", "windows")


class ServiceError(LanlicError):
    """The service cannot be installed or removed as asked."""

    code = "service"


def this_system() -> str:
    return {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")


def serve_args(license_file: str, vendor_pub: str, data: str, extra: list[str]) -> list[str]:
    """``lanlic serve``'s arguments (``--data`` left out when ``data`` is "")."""
    where = ["--data", data] if data else []
    return ["serve", "--license", license_file, "--vendor-pub", vendor_pub, *where, *extra]


def systemd_unit(python: str, license_file: str, vendor_pub: str, extra: list[str]) -> str:
    """The systemd unit: a dynamic user that owns nothing but /var/lib/lanlic, read-only
    everywhere else. The key files go in /etc/lanlic (root-owned, world-readable is fine: the
    network key and the vendor's public key are not secrets)."""
    args = " ".join(
        _systemd_quote(a) for a in [python, "-m", "lanlic", *serve_args(
            license_file, vendor_pub, "/var/lib/lanlic", extra)]
    )  # fmt: skip
    return f"""\
[Unit]
Description=lanlic LAN licence server
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
ExecStart={args}
Restart=on-failure
RestartSec=5
# SIGTERM stops the server cleanly: leases are kept in the data folder for the next start.
KillSignal=SIGTERM
TimeoutStopSec=30
DynamicUser=yes
StateDirectory=lanlic
StateDirectoryMode=0700
ConfigurationDirectory=lanlic
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
# TCP for clients and the admin page, UDP multicast for mDNS, netlink to list interfaces.
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
LimitNOFILE=65536
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-:${}=" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launchd_plist(python: str, license_file: str, vendor_pub: str, extra: list[str]) -> str:
    """The launchd daemon's plist: started at boot, restarted if it fails."""
    plist: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [
            python, "-m", "lanlic", *serve_args(license_file, vendor_pub, str(MACOS_DATA), extra)
        ],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": str(MACOS_LOG),
        "StandardErrorPath": str(MACOS_LOG),
        "Umask": 0o077,
        "ExitTimeOut": 30,
        "SoftResourceLimits": {"NumberOfFiles": 65536},
    }  # fmt: skip
    return plistlib.dumps(plist).decode("utf-8")


# ---------------------------------------------------------------------------------- command


def add_parser(sub: Any) -> None:
    """Add ``lanlic service`` to the ``lanlic`` parser's subcommands."""
    sp = sub.add_parser("service", help="run the server as this OS's service")
    ssub = sp.add_subparsers(dest="service_command", required=True)
    for name, help_ in (
        ("print-unit", "print the systemd unit or launchd plist (Windows: what install does)"),
        ("install", "install the service (Windows: pywin32's service; others: the unit file)"),
        ("remove", "remove the service"),
    ):
        p = ssub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=run)
        p.add_argument("--system", choices=SYSTEMS, default=this_system(), help="the target OS")
        if name == "remove":
            p.add_argument("--path", help="the unit file (default: the OS's place for it)")
            continue
        install = name == "install"
        p.add_argument("--license", required=install, default="/etc/lanlic/network-key.lic",
                       help="the network key file the service serves")  # fmt: skip
        p.add_argument("--vendor-pub", required=install, default="/etc/lanlic/vendor.pub",
                       help="the vendor's public key file")  # fmt: skip
        p.add_argument("--python", default=sys.executable, help="the Python that runs lanlic")
        p.add_argument("--path", help="where install writes the unit file")
        p.add_argument("serve_options", nargs="*", metavar="-- SERVE-OPTION",
                       help="more 'lanlic serve' options, after --")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    system: str = args.system
    if args.service_command == "print-unit":
        print(unit_text(args), end="")
        return 0
    if system == "windows":
        from lanlic.server import winservice

        if args.service_command == "install":
            winservice.install(serve_args(args.license, args.vendor_pub, "", args.serve_options))
        else:
            winservice.remove()
        return 0
    path = Path(args.path) if args.path else (SYSTEMD_PATH if system == "linux" else LAUNCHD_PATH)
    if args.service_command == "install":
        try:
            path.write_text(unit_text(args))
        except OSError as exc:
            raise ServiceError(f"cannot write {path}: {exc.strerror} (run as root?)") from None
        then = (
            f"systemctl daemon-reload && systemctl enable --now {path.stem}"
            if system == "linux"
            else f"launchctl bootstrap system {path}"
        )
        print(f"wrote {path}; start it now and at every boot with:\n  {then}")
        return 0
    before = (
        f"systemctl disable --now {path.stem}"
        if system == "linux"
        else f"launchctl bootout system/{LAUNCHD_LABEL}"
    )
    try:
        path.unlink()
    except FileNotFoundError:
        raise ServiceError(f"there is no service file {path}") from None
    except OSError as exc:
        raise ServiceError(f"cannot remove {path}: {exc.strerror} (run as root?)") from None
    print(f"removed {path} (stop the running service first: {before})")
    return 0


def unit_text(args: argparse.Namespace) -> str:
    license_file, vendor_pub = os.fspath(args.license), os.fspath(args.vendor_pub)
    if args.system == "linux":
        return systemd_unit(args.python, license_file, vendor_pub, args.serve_options)
    if args.system == "macos":
        return launchd_plist(args.python, license_file, vendor_pub, args.serve_options)
    doc = {"service": NAME, "serve": serve_args(license_file, vendor_pub, "", args.serve_options)}
    return (
        "# 'lanlic service install' on Windows registers the service 'lanlic' (pywin32) that\n"
        f"# runs, with its data folder %PROGRAMDATA%\\lanlic, and keeps in {WINDOWS_ARGS_FILE}:\n"
        + json.dumps(doc, indent=2)
        + "\n"
    )
