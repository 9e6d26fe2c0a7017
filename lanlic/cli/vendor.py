"""``lanlic vendor``: the vendor's tools, a key pair and the network keys it signs.

Both refuse to overwrite: a lost vendor key orphans every network key it signed, and a network
key overwritten by a typo is a customer's licence gone (``--force`` says it is meant).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from lanlic.cli.common import CliError, Commands, FileProblem, print_json, today

__all__ = ["register"]


def cmd_vendor_keygen(args: argparse.Namespace) -> int:
    from lanlic.core import signing
    from lanlic.core.netkey import generate_vendor_key
    from lanlic.vendorkeys import write_vendor_keypair

    out = Path(args.out)
    key = generate_vendor_key()
    try:
        out.mkdir(parents=True, exist_ok=True)
        key_path, pub_path = write_vendor_keypair(out, key)
    except FileExistsError as exc:
        if exc.filename is not None and Path(exc.filename).name == "vendor.key":
            raise CliError(
                f"{out / 'vendor.key'} already exists; refusing to overwrite it"
            ) from None
        raise FileProblem.of(exc) from None
    except OSError as exc:
        raise FileProblem.of(exc, str(out)) from None
    fp = signing.fingerprint(key.public_key())
    if args.json:
        print_json({"private": str(key_path), "public": str(pub_path), "fingerprint": fp})
    else:
        print(f"wrote {key_path} (keep it secret) and {pub_path}\nvendor fingerprint {fp}")
    return 0


def cmd_vendor_issue(args: argparse.Namespace) -> int:
    from lanlic import osdeps
    from lanlic.core import netkey
    from lanlic.vendorkeys import load_vendor_private

    try:
        expires = dt.date.fromisoformat(args.expires)
    except ValueError:
        raise CliError(f"--expires must be a date, YYYY-MM-DD, not {args.expires!r}") from None
    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.force:
        raise CliError(f"{out} already exists; refusing to overwrite it (--force replaces it)")
    try:
        products = [netkey.parse_product_spec(p) for p in args.product]
        private = load_vendor_private(Path(args.vendor_key))
        content = netkey.issue_network_key(
            private,
            customer=args.customer,
            expires=expires,
            borrow_kind=args.borrow_kind,
            products=products,
            issued=today(),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise FileProblem.of(exc, args.vendor_key) from None
    try:
        osdeps.write_atomic(out, content, mode=0o644)
    except OSError as exc:
        raise FileProblem.of(exc, str(out)) from None
    if args.json:
        print_json({"out": args.out, "customer": args.customer, "products": len(products)})
    else:
        print(f"wrote network key {args.out} for {args.customer!r}, {len(products)} product(s)")
    return 0


def register(commands: Commands) -> None:
    vendor = commands.group(
        "vendor", "vendor tools: make keys, issue network keys", "vendor_command"
    )
    sp = vendor.add("keygen", cmd_vendor_keygen, "make a vendor key pair")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for vendor.key and .pub")
    sp = vendor.add("issue", cmd_vendor_issue, "issue a signed network key")
    sp.add_argument("--vendor-key", required=True, help="the vendor's private key file")
    sp.add_argument("--customer", required=True)
    sp.add_argument("--expires", required=True, help="last valid day, YYYY-MM-DD")
    sp.add_argument("--borrow-kind", required=True, choices=["act", "key"])
    sp.add_argument(
        "--product",
        action="append",
        required=True,
        help="NAME:SEATS[:borrowable=N][:max-days=N][:versions=LO-HI][:addon] (repeatable)",
    )
    sp.add_argument("--out", required=True, help="the network key file to write")
    sp.add_argument("--force", action="store_true", help="replace --out if it exists")
