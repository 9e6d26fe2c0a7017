"""lanlic: a LAN floating-license server and client library."""

from lanlic.errors import *  # noqa: F403
from lanlic.errors import __all__ as _errors_all

__version__ = "0.1.0"
__all__ = ["__version__", *_errors_all]
