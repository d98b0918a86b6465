"""The three packages import from the installed distribution and expose its version."""

import ast
import importlib
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

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
    assert not {*HEAVY, "clarabel", "scs"} & mods


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


PACKAGES = ("ufm", "deepnet", "reduction", "deepcollapse")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the four packages: name -> (file, is a package's __init__)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def _imports(
    name: str, path: Path, is_pkg: bool, modules: dict
) -> list[tuple[str, str, str, bool]]:
    """(module imported, the module named after ``from`` or the one imported, the name imported
    from it or "", at module level) for every import of the module that names one of the four
    packages, at any depth (functions included), except those under ``if TYPE_CHECKING:``
    (never executed). ``from pkg import submodule`` imports the submodule."""
    tree = ast.parse(path.read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for sub in node.body for n in ast.walk(sub)}
    top = {id(n) for n in tree.body}
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, a.name, "", id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts) + (f".{node.module}" if node.module else "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in modules else base, base, alias.name, id(node) in top))
    return [t for t in out if t[0].split(".")[0] in PACKAGES]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_pkg) in modules.items():
        for target, _, _, _ in _imports(name, path, is_pkg, modules):
            while target and target not in modules:  # a name of a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def test_no_import_cycles_anywhere_in_the_packages() -> None:
    """The import graph of every module of the four packages, function-level imports included,
    is acyclic (a cycle hidden in a function is still a cycle: it only fails later)."""
    graph = _graph()
    # the graph sees module-level and function-level imports alike
    assert "reduction.execute" in graph["reduction.sweep"]
    assert "reduction.profile" in graph["reduction.compare"]  # imported in a function
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_contracts_import_rules() -> None:
    """docs/CONTRACTS.md: ufm imports no sibling but deepcollapse.output; deepcollapse imports no
    project package at module level; deepnet never imports reduction; reduction imports from
    deepnet only the names ``deepnet`` and ``deepnet.data`` export (``__all__``), never a
    deepnet module's private helpers."""
    import deepnet
    import deepnet.data

    public = {"deepnet": set(deepnet.__all__), "deepnet.data": set(deepnet.data.__all__)}
    modules = _modules()
    for name, (path, is_pkg) in modules.items():
        for target, source, imported, top in _imports(name, path, is_pkg, modules):
            root = target.split(".")[0]
            if name.startswith("ufm"):
                assert root == "ufm" or target == "deepcollapse.output", (name, target)
            elif name.startswith("deepcollapse"):
                assert root == "deepcollapse" or not top, (name, target)
            elif name.startswith("deepnet"):
                assert root != "reduction", (name, target)
            elif root == "deepnet":
                assert source in public and imported in public[source], (name, source, imported)


def test_reduction_collect_is_the_function_whatever_is_imported_first() -> None:
    """reduction.collect is a function and a submodule's name: lazily, the function must win
    whichever import runs first."""
    code = ("import reduction.collect; from reduction import classifier_features, collect; "
            "import reduction; assert callable(collect) and reduction.collect is collect; "
            "from reduction.collect import module_layout")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
