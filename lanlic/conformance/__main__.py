"""``python -m lanlic.conformance HOST:PORT [--vectors DIR] [--timeout S] [--versions 1,2]``:
play every session and every invalid frame vector against the server at HOST:PORT, print PASS,
FAIL or N/A per case (with the reason), and exit 1 if any case failed, 2 if the runner could
not start."""

from __future__ import annotations

import argparse
import sys

from lanlic.conformance.runner import VERSIONS, find_vectors, run


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _versions(text: str) -> tuple[int, ...]:
    try:
        versions = tuple(sorted({int(x) for x in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of versions, like 1,2") from None
    if not set(versions) <= set(VERSIONS):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the SPEC defines versions {','.join(map(str, VERSIONS))}"
        )
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lanlic.conformance",
        description="Judge a lanlic protocol server by protocol/SPEC.md and its test vectors.",
    )
    parser.add_argument("address", type=_address, help="the server, HOST:PORT ([::1]:PORT)")
    parser.add_argument(
        "--vectors",
        help="folder with sessions.json and frames.json (default: protocol/vectors of the "
        "lanlic source tree this runs from)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each answer (5)"
    )
    parser.add_argument(
        "--versions",
        type=_versions,
        default=VERSIONS,
        help="the protocol versions the server implements, comma-separated (default: all the "
        "SPEC defines, " + ",".join(map(str, VERSIONS)) + "); a session that needs another is "
        "reported N/A",
    )
    args = parser.parse_args(argv)
    try:
        vectors = find_vectors(args.vectors)
    except FileNotFoundError as exc:
        print(f"lanlic.conformance: {exc}", file=sys.stderr)
        return 2
    host, port = args.address
    passed = failed = skipped = 0
    for result in run(host, port, vectors, args.timeout, args.versions):
        print(result.line(), flush=True)
        if not result.applicable:
            skipped += 1
        elif result.passed:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed" + (f", {skipped} not applicable" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
