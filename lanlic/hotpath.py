"""The modules every checkout, renew and release passes through, in the order a request meets
them, and the hash tree a burst of hellos is signed under (``welcomebatch``): what the optional
compiled build compiles (setup.py, ``LANLIC_COMPILE=1``).

Plain data with no imports, so setup.py reads it without importing lanlic. A module here must
keep to what mypyc compiles (no subclass of a class of another module, no class-level callable
default), and tests must not monkeypatch its classes: a compiled class refuses new attributes
and method assignment (tests/test_compiled.py runs the suites against the compiled build).
"""

MODULES = (
    "lanlic.proto.framing",
    "lanlic.proto.connection",
    "lanlic.proto.requests",
    "lanlic.net.server",
    "lanlic.core.service",
    "lanlic.core.pool",
    "lanlic.core.restart",
    "lanlic.proto.replybytes",
    "lanlic.core.welcomebatch",
)
