"""Version checks of the integrations: clear errors for unsupported TRL / transformers versions."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from localdpo.integrations import compat


def _fake_versions(monkeypatch, **versions):
    monkeypatch.setattr(compat, "installed_version", lambda package: versions.get(package))


def test_supported_ranges_match_pyproject():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for package, supported in compat.SUPPORTED_VERSIONS.items():
        assert f'"{package}{supported}"' in text, f"{package}{supported} is not the range in pyproject.toml"


def test_installed_versions_are_read_and_pass():
    import transformers
    import trl
    from packaging.specifiers import SpecifierSet

    assert compat.installed_version("trl") == trl.__version__
    assert compat.installed_version("transformers") == transformers.__version__
    assert compat.installed_version("no-such-package-localdpo") is None
    for package, supported in compat.SUPPORTED_VERSIONS.items():
        assert compat.installed_version(package) in SpecifierSet(supported), package
    assert compat.check_versions() is None  # no IncompatibleVersionError for what is installed


@pytest.mark.parametrize("trl_version", ["1.15.2", "1.17.0", "2.0.0"])
def test_unsupported_trl_names_installed_and_supported_versions(monkeypatch, trl_version):
    _fake_versions(monkeypatch, trl=trl_version, transformers="5.23.0")
    with pytest.raises(compat.IncompatibleVersionError) as error:
        compat.check_versions(integration="localdpo.integrations.trl")
    message = str(error.value)
    assert f"trl=={trl_version} is installed" in message
    assert "trl>=1.16,<1.17" in message
    assert "transformers" not in message.split("Install")[0]


def test_boundaries_of_the_range(monkeypatch):
    for version in ("1.16.0", "1.16.9"):
        _fake_versions(monkeypatch, trl=version, transformers="5.0.0")
        compat.check_versions()
    _fake_versions(monkeypatch, trl="1.16.0", transformers="5.23.9")
    compat.check_versions()
    for version in ("5.24.0", "6.0.0"):
        _fake_versions(monkeypatch, trl="1.16.0", transformers=version)
        with pytest.raises(compat.IncompatibleVersionError, match=re.escape("transformers>=5.0,<5.24")):
            compat.check_versions()


def test_missing_package(monkeypatch):
    _fake_versions(monkeypatch, transformers="5.23.0")
    with pytest.raises(compat.IncompatibleVersionError, match="trl is not installed"):
        compat.check_versions()


@pytest.mark.parametrize(
    ("module", "versions", "pattern"),
    [
        (
            "localdpo.integrations.trl",
            {"trl": "1.17.0", "transformers": "5.23.0"},
            r"trl==1\.17\.0 is installed",
        ),
        (
            "localdpo.integrations.hf",
            {"trl": "1.16.0", "transformers": "6.1.0"},
            r"transformers==6\.1\.0 is installed",
        ),
    ],
)
def test_importing_an_integration_with_an_unsupported_version_raises(monkeypatch, module, versions, pattern):
    _fake_versions(monkeypatch, **versions)
    monkeypatch.delitem(sys.modules, module, raising=False)  # restored at teardown
    with pytest.raises(compat.IncompatibleVersionError, match=pattern):
        importlib.import_module(module)
