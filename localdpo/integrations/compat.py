"""Version checks for the libraries the integrations patch into.

`LocalizedDPOTrainer` overrides private methods of TRL's `DPOTrainer` (`_prepare_dataset`,
`_set_signature_columns_if_needed`) and relies on its collator's `completion_mask` being the only mask its
loss reads; those are not a stable API, so each integration checks the installed versions on import and
refuses a version it was not tested against instead of training on silently wrong masks.
"""

from __future__ import annotations

import importlib.metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# Same ranges as pyproject.toml (tests/integrations/test_compat.py checks that they agree).
SUPPORTED_VERSIONS: dict[str, str] = {
    "trl": ">=1.16,<1.17",
    "transformers": ">=5.0,<5.24",
}


class IncompatibleVersionError(ImportError):
    """An installed library is outside the version range a localdpo integration supports."""


def installed_version(package: str) -> str | None:
    """Installed version of `package`, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions(
    packages: tuple[str, ...] = ("trl", "transformers"), *, integration: str = "localdpo"
) -> None:
    """Raise `IncompatibleVersionError` naming the installed and supported versions of any package out of range."""
    problems = []
    for package in packages:
        supported = SUPPORTED_VERSIONS[package]
        found = installed_version(package)
        if found is None:
            problems.append(f"{package} is not installed (supported: {package}{supported})")
        elif Version(found) not in SpecifierSet(supported):
            problems.append(
                f"{package}=={found} is installed, but {integration} supports {package}{supported}"
            )
    if problems:
        hint = " ".join(f'"{p}{SUPPORTED_VERSIONS[p]}"' for p in packages)
        raise IncompatibleVersionError(
            f"{integration}: " + "; ".join(problems) + f". Install a supported version: pip install {hint}"
        )
