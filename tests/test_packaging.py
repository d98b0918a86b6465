"""The three packages import from the installed distribution and expose its version."""

import importlib
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["deepcollapse", "ufm", "deepnet", "reduction"])
def test_package_imports_and_version(name: str) -> None:
    mod = importlib.import_module(name)
    dist_version = md.version("deepcollapse")
    assert mod.__version__ == dist_version
    assert dist_version.count(".") >= 1


def test_distribution_core_is_ufm_and_the_rest_are_extras() -> None:
    dist = md.distribution("deepcollapse")
    assert dist.metadata["Name"] == "deepcollapse"
    core = [r.split(";")[0].strip() for r in dist.requires or [] if "extra ==" not in r]
    assert sorted(r.split(">")[0] for r in core) == ["numpy", "scipy"]
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    assert {"certify", "torch", "plots", "data", "train", "ray", "all", "test"} <= extras

    def extra(name: str) -> str:
        return " ".join(r for r in dist.requires or [] if f'extra == "{name}"' in r)

    assert "cvxpy" in extra("certify") and "torch" in extra("torch")
    assert "mnist1d" in extra("data") and "scikit-learn" in extra("data")
    assert "pandas" in extra("train") and "deepcollapse[data,plots,torch]" in extra("train")
    assert "deepcollapse[certify,ray,train]" in extra("all")
    assert md.entry_points(group="console_scripts", name="deepcollapse")
    ep = next(iter(md.entry_points(group="console_scripts", name="deepcollapse")))
    assert ep.value == "deepcollapse.cli:main"
    # The installed packages resolve to this source tree (editable install) or site-packages.
    for name in ("deepcollapse", "ufm", "deepnet", "reduction"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None


def _imported(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out))


HEAVY = ("torch", "matplotlib", "scipy.stats", "pandas", "cvxpy")


def test_layering_ufm_imports_neither_sibling() -> None:
    """ufm is the pure theory layer: importing it must not pull deepnet or reduction (it may use
    deepcollapse.output, the shared output policy)."""
    mods = _imported("import ufm, ufm.cli")
    assert not {"deepnet", "reduction"} & mods
    assert not set(HEAVY) & mods


def test_deepcollapse_imports_nothing_heavy() -> None:
    """The command layer starts fast: no torch, matplotlib, scipy.stats (nor any package of the
    project) at import time."""
    mods = _imported("import deepcollapse, deepcollapse.cli, deepcollapse.output, "
                     "deepcollapse.files")
    assert not set(HEAVY) & mods
    assert not {"ufm", "deepnet", "reduction", "numpy"} & mods


def test_reduction_is_lazy() -> None:
    """import reduction loads none of its heavy modules; a name loads only what it needs."""
    assert not set(HEAVY) & _imported("import reduction")
    presets = _imported("from reduction import PRESETS")
    assert not set(HEAVY) & presets and "deepnet" not in presets
    report = _imported("from reduction import report")
    assert "torch" not in report and "deepnet" not in report


def test_only_the_allowed_imports_between_packages() -> None:
    """ufm → deepcollapse.output only; deepcollapse → no project package at module level."""
    for path in (ROOT / "ufm").rglob("*.py"):
        text = path.read_text()
        for other in ("deepnet", "reduction"):
            assert f"import {other}" not in text and f"from {other}" not in text, path
        for line in text.splitlines():
            if line.strip().startswith("from deepcollapse"):
                assert line.strip().startswith("from deepcollapse.output import"), (path, line)
    for path in (ROOT / "deepcollapse").rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):  # module level only
                assert line.split()[1].split(".")[0] not in ("ufm", "deepnet", "reduction"), (
                    path, line)


def test_deepnet_never_imports_reduction() -> None:
    for path in (ROOT / "deepnet").rglob("*.py"):
        text = path.read_text()
        assert "import reduction" not in text and "from reduction" not in text, path


def test_reduction_collect_is_the_function_whatever_is_imported_first() -> None:
    """reduction.collect is a function and a submodule's name: lazily, the function must win
    whichever import runs first."""
    code = ("import reduction.collect; from reduction import classifier_features, collect; "
            "import reduction; assert callable(collect) and reduction.collect is collect; "
            "from reduction.collect import module_layout")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
