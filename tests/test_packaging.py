"""The three packages import from the installed distribution and expose its version."""

import importlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["ufm", "deepnet", "reduction"])
def test_package_imports_and_version(name: str) -> None:
    mod = importlib.import_module(name)
    dist_version = md.version("deepcollapse")
    assert mod.__version__ == dist_version
    assert dist_version.count(".") >= 1


def test_distribution_lists_the_packages() -> None:
    dist = md.distribution("deepcollapse")
    assert dist.metadata["Name"] == "deepcollapse"
    requires = " ".join(dist.requires or [])
    for dep in ("numpy", "scipy", "cvxpy", "torch", "matplotlib"):
        assert dep in requires
    # The installed packages resolve to this source tree (editable install) or site-packages.
    for name in ("ufm", "deepnet", "reduction"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None


def test_layering_ufm_imports_neither_sibling() -> None:
    """ufm is the pure theory layer: importing it must not pull deepnet or reduction."""
    code = (
        "import sys, ufm; "
        "bad = [m for m in ('deepnet', 'reduction') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_deepnet_never_imports_reduction() -> None:
    for path in (ROOT / "deepnet").rglob("*.py"):
        text = path.read_text()
        assert "import reduction" not in text and "from reduction" not in text, path
