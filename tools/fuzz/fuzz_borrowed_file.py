"""Atheris harness: hostile bytes through lanlic's signed-document readers.

The first byte of each input picks the target, the rest is the input:

* 0: a borrowed licence file as found on disk: ``parse_borrowed_file`` and
  ``verify_borrowed_file`` against the laptop's view in protocol/vectors/documents.json.
* 1: a borrowed file whose *payload* is the input, signed with the vectors' real server key, so
  the checks after the signature (kind, machine, clock, start, end) are reached too.
* 2: an enrollment request, as the server reads it from the network before anything is trusted
  (``read_enrollment_request``), and an enrollment response as the laptop reads it.
* 3: a payload made of a short piece repeated up to 64 KiB (libFuzzer's inputs stay short, so
  deep nesting and long numbers are built here), as a signed borrowed file and an enrollment
  request.

Only ``BorrowedFileError`` may come out; any other exception is a crash. A file that
verifies must also make sense: a finite period that contains the check's ``now``.

    python tools/fuzz/fuzz_borrowed_file.py -atheris_runs=100000 -dict=tools/fuzz/json.dict

With no corpus folder given, it starts from one seeded with protocol/vectors/documents.json.
"""

from __future__ import annotations

import base64
import json
import math
import sys

import atheris
from seeds import corpus_argv, documents

with atheris.instrument_imports():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from lanlic.core import borrowing, signing
    from lanlic.core.borrowing import FileCheck
    from lanlic.errors import BorrowedFileError

DOCS = documents()
KEYS = DOCS["keys"]
SERVER = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["server"]))
CONTAINER_PUB = bytes.fromhex(KEYS["container_public"])
VALID = next(v for v in DOCS["borrowed_files"] if v["name"] == "valid")
MAX_DOC = 60 * 1024  # payloads stay under the 64 KiB document limit once wrapped
CHECK_FIELDS = VALID["check"]
CHECK = FileCheck(
    trusted_server_keys=[bytes.fromhex(k) for k in CHECK_FIELDS["trusted_server_keys"]],
    container_key=bytes.fromhex(CHECK_FIELDS["container_key"]),
    machine_fp=CHECK_FIELDS["machine_fp"],
    now=CHECK_FIELDS["now"],
    last_seen=CHECK_FIELDS["last_seen"],
    returned=CHECK_FIELDS["returned"],
)


def signed_file(payload: str) -> bytes:
    sig = signing.sign(SERVER, signing.DOMAIN_BORROWED_FILE, payload.encode("utf-8", "replace"))
    doc = {
        "format": borrowing.FMT_BORROWED,
        "version": 1,
        "payload": payload,
        "signature": base64.b64encode(sig).decode("ascii"),
    }
    return json.dumps(doc).encode("utf-8")


def enrollment_request(payload: str) -> bytes:
    doc = {
        "format": borrowing.FMT_REQUEST,
        "version": 1,
        "payload": payload,
        "signature": base64.b64encode(bytes(64)).decode("ascii"),
    }
    return json.dumps(doc).encode("utf-8")


def check_licence(data: bytes) -> None:
    try:
        lic = borrowing.verify_borrowed_file(data, CHECK)
    except BorrowedFileError as exc:
        if not exc.code.startswith(("file_", "clock_")):
            raise AssertionError(f"unexpected code {exc.code!r}") from exc
        return
    if not (math.isfinite(lic.start) and math.isfinite(lic.end)):
        raise AssertionError(f"a file with a period of {lic.start}..{lic.end} verified")
    if not lic.start - borrowing.CLOCK_TOLERANCE <= CHECK.now < lic.end:
        raise AssertionError("a file verified outside its period")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    if mode == 0:
        try:
            borrowing.parse_borrowed_file(rest)
        except BorrowedFileError:
            pass
        check_licence(rest)
    elif mode == 1:
        payload = rest.decode("utf-8", "replace")
        check_licence(signed_file(payload))
    elif mode == 3:
        times = int.from_bytes(rest[:2], "big")
        piece = rest[2:] or b"["
        payload = (piece * min(times, MAX_DOC // len(piece))).decode("utf-8", "replace")
        check_licence(signed_file(payload))
        try:
            borrowing.read_enrollment_request(enrollment_request(payload))
        except BorrowedFileError:
            pass
    else:
        for read in (
            borrowing.read_enrollment_request,
            lambda d: borrowing.read_enrollment_response(d, CONTAINER_PUB),
        ):
            try:
                read(rest)
            except BorrowedFileError:
                pass


def seed_inputs() -> list[bytes]:
    out = [b"\x00" + v["document"].encode() for v in DOCS["borrowed_files"]]
    payload = json.loads(VALID["document"])["payload"]
    out.append(b"\x01" + payload.encode())
    out += [b"\x02" + v["document"].encode() for v in DOCS["enrollment"]]
    out += [b"\x03\x00\x10" + payload[:40].encode(), b"\x03\x01\x00" + payload.encode()]
    return out


def main() -> None:
    with corpus_argv(sys.argv, seed_inputs()) as argv:
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
