"""The supported Python and transformers versions, checked once when analysis_lib is imported.

The range is the one ``make test-compat`` tests at both ends and ``pyproject.toml`` declares (a test
keeps the two in step). Outside it, hooks would fail deep inside a model's forward (a renamed argument,
a moved attribute); this check says so in one line instead. Set ``ANALYSIS_LIB_ALLOW_UNSUPPORTED=1`` to
turn the transformers check into a warning, e.g. to try a release newer than the range.
"""
from __future__ import annotations

import os
import sys
import warnings
from importlib import metadata

MIN_PYTHON = (3, 11)
#: transformers releases tested at both ends: minimum included, maximum excluded
TRANSFORMERS_RANGE = ("5.17", "5.25")
ALLOW_ENV = "ANALYSIS_LIB_ALLOW_UNSUPPORTED"


class UnsupportedEnvironment(RuntimeError):
    """The installed Python or transformers is outside the range this release is tested with."""


def transformers_supported(version: str) -> bool:
    """Whether ``version`` lies in the range, by its release number (5.25.0.dev0 counts as 5.25.0)."""
    from packaging.version import Version  # a dependency of transformers, so present whenever it is

    low, high = (Version(v) for v in TRANSFORMERS_RANGE)
    return low <= Version(Version(version).base_version) < high


def supported_range_text() -> str:
    low, high = TRANSFORMERS_RANGE
    return f">={low},<{high}"


def check_python(version_info: tuple[int, ...] = tuple(sys.version_info[:3])) -> None:
    if tuple(version_info[:2]) < MIN_PYTHON:
        installed = ".".join(map(str, version_info[:3]))
        raise UnsupportedEnvironment(f"analysis_lib needs Python >= {'.'.join(map(str, MIN_PYTHON))}; "
                                     f"this is Python {installed}")


def check_transformers(version: str | None, allow: bool = False) -> None:
    """Refuse (or warn, with ``allow``) when ``version`` is outside the supported range; None = not installed."""
    if version is None:
        raise UnsupportedEnvironment(f"analysis_lib needs transformers{supported_range_text()}; it is not "
                                     "installed (make setup, or pip install -e . in this repository)")
    if transformers_supported(version):
        return
    message = (f"transformers {version} is installed; analysis_lib supports transformers{supported_range_text()} "
               f"(tested at both ends by make test-compat)")
    if allow:
        warnings.warn(message + f"; {ALLOW_ENV} is set, continuing untested", stacklevel=3)
        return
    raise UnsupportedEnvironment(message + f"; install a supported release, or set {ALLOW_ENV}=1 to try anyway")


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_environment() -> None:
    """Both checks, with the running interpreter and the installed transformers."""
    check_python()
    check_transformers(installed_version("transformers"), allow=os.environ.get(ALLOW_ENV, "") not in ("", "0"))
