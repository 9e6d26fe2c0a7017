"""The embedded demo: a vendor key and a network key made on the spot, so ``lanlic serve --demo``
works on a fresh machine with no setup.

The demo vendor key lives in the demo's own data folder; nothing signed by it is worth anything
outside the demo. The products mirror a small CAD office: the CAD program with 10 seats, all
borrowable, and two add-ons with fewer seats.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from lanlic import osdeps
from lanlic.core import netkey
from lanlic.core.netkey import ProductEntitlement
from lanlic.errors import NetworkKeyError
from lanlic.vendorkeys import load_vendor_private, load_vendor_public, write_vendor_keypair

__all__ = ["DEMO_PRODUCTS", "ensure_demo"]

DEMO_CUSTOMER = "Demo CAD Office"
DEMO_PRODUCTS = (
    ProductEntitlement(
        name="cad", seats=10, borrowable=10, max_borrow_days=30, versions=("10", "16"), addon=False
    ),
    ProductEntitlement(
        name="cad-render", seats=3, borrowable=1, max_borrow_days=7, versions=None, addon=True
    ),
    ProductEntitlement(
        name="cad-cam", seats=2, borrowable=0, max_borrow_days=0, versions=None, addon=True
    ),
)


def ensure_demo(data: Path, today: dt.date) -> tuple[Path, Path]:
    """Make (once) the demo vendor key and a network key valid for a year; return their paths.

    A demo key that has expired or no longer verifies is issued again.
    """
    vendor_dir = data / "demo-vendor"
    vendor_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, pub_path = vendor_dir / "vendor.key", vendor_dir / "vendor.pub"
    if not key_path.exists():
        write_vendor_keypair(vendor_dir, netkey.generate_vendor_key())
    license_path = data / "demo.lic"
    if license_path.exists():
        try:
            netkey.verify_network_key(
                license_path.read_bytes(), load_vendor_public(pub_path), today
            )
            return license_path, pub_path
        except NetworkKeyError:
            pass  # expired or damaged: issue a fresh one below
    content = netkey.issue_network_key(
        load_vendor_private(key_path),
        customer=DEMO_CUSTOMER,
        expires=today + dt.timedelta(days=365),
        borrow_kind="act",
        products=DEMO_PRODUCTS,
        issued=today,
    )
    osdeps.write_atomic(license_path, content)  # every file of a data folder is private
    return license_path, pub_path
