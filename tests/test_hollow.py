"""No hollow test: a static scan of tests/ for tests that cannot fail.

Three kinds are caught, each a test that passes whatever the code does:

* a test that checks nothing: no ``assert``, no ``pytest.raises``/``pytest.fail``/``warns``, and no
  call to a helper (a function or method defined under tests/) that checks something itself;
* an ``assert`` on a constant that is true (``assert True``, ``assert 1``, ``assert "text"``), or
  on a non-empty tuple (``assert (x, "message")``), which is always true;
* a broad ``except`` (bare, ``Exception``, ``BaseException``, ``AssertionError``) around an
  ``assert`` that does not raise again: the failure is swallowed; and ``pytest.raises(Exception)``,
  which a bug's own TypeError or AssertionError satisfies as well as the error meant.

The scan is by name, so it is generous (any call to a checking helper counts); the allow-list
below is empty and should stay short, each entry with the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

ALLOWED: dict[str, str] = {
    # "tests/x/test_y.py::test_z": "why it checks without an assert",
}
"""Tests known to check something the scan cannot see, with the reason."""

CHECK_CALLS = {"raises", "fail", "warns", "deprecated_call", "approx"}
"""pytest's own checks: ``pytest.raises(...)`` and friends."""

BROAD = {"Exception", "BaseException", "AssertionError"}


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(TESTS.rglob("*.py")):
        yield path, ast.parse(path.read_text("utf-8"), str(path))


def call_names(node: ast.AST) -> set[str]:
    """The simple names of everything called under ``node`` (``f()``, ``x.f()``, ``x.y.f()``),
    and of functions passed as arguments (``run(check)``)."""
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute):
                names.add(f.attr)
            for arg in [*n.args, *(k.value for k in n.keywords)]:
                if isinstance(arg, ast.Name):
                    names.add(arg.id)
                elif isinstance(arg, ast.Attribute):
                    names.add(arg.attr)
    return names


def has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def checking_helpers(modules: list[ast.Module]) -> set[str]:
    """Names of functions and methods defined under tests/ that check something, directly or
    through another such helper (a fixed point over the call graph, by name)."""
    defs: dict[str, list[ast.AST]] = {}
    for module in modules:
        for n in ast.walk(module):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                defs.setdefault(n.name, []).append(n)
    # Dunder methods are called by name from everywhere (``__init__``): they cannot vouch.
    defs = {name: fns for name, fns in defs.items() if not name.startswith("__")}
    checking = {
        name
        for name, fns in defs.items()
        if any(has_assert(f) or call_names(f) & CHECK_CALLS for f in fns)
    }
    while True:
        more = {
            name
            for name, fns in defs.items()
            if name not in checking and any(call_names(f) & checking for f in fns)
        }
        if not more:
            return checking
        checking |= more


def functions_named_test(module: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for n in ast.walk(module):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test"):
            yield n


def always_true(test: ast.expr) -> bool:
    if isinstance(test, ast.Constant):
        return bool(test.value)
    return isinstance(test, ast.Tuple | ast.List | ast.Set | ast.Dict) and bool(
        getattr(test, "elts", None) or getattr(test, "keys", None)
    )


def broad(handler: ast.ExceptHandler) -> bool:
    types = handler.type
    if types is None:
        return True
    elts = types.elts if isinstance(types, ast.Tuple) else [types]
    return any(isinstance(t, ast.Name) and t.id in BROAD for t in elts)


def reraises(handler: ast.ExceptHandler) -> bool:
    return any(isinstance(n, ast.Raise) for n in ast.walk(handler)) or bool(
        call_names(handler) & {"fail"}
    )


def findings() -> list[str]:
    parsed = list(sources())
    helpers = checking_helpers([module for _, module in parsed])
    found: list[str] = []
    for path, module in parsed:
        rel = path.relative_to(TESTS.parent).as_posix()
        if path.name.startswith("test_"):
            for fn in functions_named_test(module):
                where = f"{rel}::{fn.name}"
                if where in ALLOWED:
                    continue
                if not (has_assert(fn) or call_names(fn) & (CHECK_CALLS | helpers)):
                    found.append(f"{where} (line {fn.lineno}): checks nothing")
        for n in ast.walk(module):
            if isinstance(n, ast.Assert) and always_true(n.test):
                found.append(f"{rel}:{n.lineno}: assert on something always true")
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "raises"
                and n.args
                and isinstance(n.args[0], ast.Name)
                and n.args[0].id in {"Exception", "BaseException"}
            ):
                found.append(f"{rel}:{n.lineno}: pytest.raises({n.args[0].id}) takes any error")
            if isinstance(n, ast.Try):
                body = ast.Module(body=n.body, type_ignores=[])
                if has_assert(body):
                    for h in n.handlers:
                        if broad(h) and not reraises(h):
                            found.append(f"{rel}:{h.lineno}: broad except swallows an assert")
    return found


def test_no_hollow_test_in_the_suite() -> None:
    found = findings()
    assert not found, "hollow tests:\n" + "\n".join(found)


HOLLOW = """
import pytest

def helper_that_checks(x):
    assert x == 1

def test_calls_a_checking_helper():
    helper_that_checks(1)

def test_raises():
    with pytest.raises(ValueError):
        int("x")

def test_nothing():
    x = 1 + 1

def test_constant():
    assert True

def test_tuple():
    assert (1 == 2, "message")

def test_swallowed():
    try:
        assert 1 == 2
    except Exception:
        pass

def test_any_error():
    with pytest.raises(Exception):
        int("x")

def test_reraised():
    try:
        assert 1 == 1
    except Exception:
        raise
"""


def test_the_scan_finds_each_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan itself can fail: run over a folder holding one hollow test of each kind."""
    (tmp_path / "test_sample.py").write_text(HOLLOW, "utf-8")
    monkeypatch.setattr(__import__(__name__), "TESTS", tmp_path, raising=True)
    found = "\n".join(findings())
    assert "test_nothing (line" in found
    assert "test_calls_a_checking_helper" not in found
    assert "test_raises" not in found
    assert "test_reraised" not in found
    assert found.count("always true") == 2
    assert found.count("broad except") == 1
    assert found.count("takes any error") == 1


def test_test_module_names_are_unique() -> None:
    """pytest imports test modules by basename (rootdir-based): two of one name stop the whole
    run at collection, which no single-folder run shows."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
