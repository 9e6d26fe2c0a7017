"""lanlic: a LAN floating-license server and client library."""

from lanlic.errors import *  # noqa: F403
from lanlic.errors import __all__ as _errors_all

__version__ = "0.1.0"
__all__ = ["__version__", "compiled_modules", *_errors_all]


def compiled_modules() -> list[str]:
    """The modules of lanlic's hot path loaded as C extensions: the optional compiled build
    (setup.py, ``LANLIC_COMPILE=1``), or [] for pure Python. The server logs it at start and the
    benchmark reports it beside its figures."""
    import importlib
    import importlib.machinery

    from lanlic.hotpath import MODULES

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in MODULES
        if (getattr(importlib.import_module(name), "__file__", "") or "").endswith(suffixes)
    ]
