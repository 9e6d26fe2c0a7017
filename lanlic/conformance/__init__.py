"""A conformance runner for lanlic protocol servers: ``python -m lanlic.conformance HOST:PORT``.

It plays protocol/vectors/sessions.json and every invalid frame of protocol/vectors/frames.json
against a running server and says, case by case, whether the server answered as protocol/SPEC.md
says. It is written from the SPEC and the vectors alone: it imports nothing else of lanlic (its
own framing, msgpack, and an Ed25519 check of the welcome), so it judges a server written in any
language, lanlic's own included. protocol/README.md says what the server must serve.
"""

from lanlic.conformance.runner import CaseResult, find_vectors, run

__all__ = ["CaseResult", "find_vectors", "run"]
