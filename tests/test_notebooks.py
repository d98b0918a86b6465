"""The notebooks execute top to bottom (smoke setting), are stored with the outputs of such a run
(scripts/run_notebooks.py), write only under their own folder, and every cell that draws a figure
shows it (an image/png output after execution, no wider than a README can show)."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
FIRST = [
    "01_ufm_optimum.ipynb",
    "02_resnet_depth.ipynb",
    "03_transformer_depth.ipynb",
    "04_measure_your_model.ipynb",
]
#: calls that create a matplotlib figure: reduction's plot functions return a Figure that pyplot
#: does not know, so such a cell must display it (display(fig)); pyplot figures show under inline
FIGURE_CALL = re.compile(r"\b(plot_depth|plot_layer_profile|plot_history|plt\.subplots|Figure)\(")
FIGURE_TAG = "figure"


def _cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _tagged(cell: dict) -> bool:
    return FIGURE_TAG in cell.get("metadata", {}).get("tags", [])


def test_the_numbered_notebooks_exist_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert names[: len(FIRST)] == FIRST
    # later notebooks continue the numbering
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names)
    assert len({n[:2] for n in names}) == len(names)


def _png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


def _text(output: dict) -> str:
    text = output.get("text", "")
    plain = output.get("data", {}).get("text/plain", "")
    return "".join(text) + "".join(plain)


#: notebooks stored with the outputs of the full presets, read from their sweep folders
#: (scripts/run_notebooks.py --full): 03 shows the converged transformer presets (issue 20)
STORED_FULL = {"03_transformer_depth"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stored_from_a_recorded_run(path: Path):
    """A reader online sees what a run printed and drew: every code cell ran, in order, without
    an error or a warning, in smoke mode (in full mode for STORED_FULL); every figure is an
    image no wider than 1400 px; no output shows a path of the machine that ran it."""
    cells = _cells(path)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    mode = "full mode" if path.stem in STORED_FULL else "smoke mode"
    assert mode in "".join(_text(o) for o in cells[0]["outputs"])
    text = "\n".join(_text(o) for o in outputs)
    for bad in ("/work/", "/tmp/", "/home/", "Traceback", "Warning:"):
        assert bad not in text, f"{path.name}: output shows {bad!r}"
    for i, cell in enumerate(cells):
        images = [o["data"]["image/png"] for o in cell["outputs"]
                  if "image/png" in o.get("data", {})]
        assert bool(images) == _tagged(cell), f"code cell {i}"
        for png in images:
            width, height = _png_size(png)
            assert width <= 1400 and height <= 1400, (path.name, i, width, height)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_full_mode_is_opt_in_and_writes_stay_in_the_notebook_folder(path: Path):
    nb = json.loads(path.read_text())
    source = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert 'os.environ.get("DEEPCOLLAPSE_FULL") == "1"' in source
    assert "../" not in source  # nothing outside notebooks/
    if "RESULTS" in source:
        assert 'os.environ.get("DEEPCOLLAPSE_RESULTS", "results")' in source
    intro = "".join(nb["cells"][0]["source"])
    assert "DEEPCOLLAPSE_FULL=1" in intro and re.search(r"minute", intro), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_cells_are_tagged(path: Path):
    """A cell is tagged "figure" iff it creates a figure; every notebook has one."""
    for i, cell in enumerate(_cells(path)):
        creates = bool(FIGURE_CALL.search(_source(cell)))
        assert creates == _tagged(cell), (
            f"code cell {i}: creates a figure: {creates}, tagged {FIGURE_TAG!r}: {_tagged(cell)}"
        )
    assert any(_tagged(c) for c in _cells(path))


@pytest.mark.parametrize(
    "source, expected",
    [
        ("display(reduction.plot_depth(rows))", True),
        ("fig = Figure(figsize=(3, 3))", True),
        ("fig, ax = plt.subplots(1, 2)", True),
        ("print(res.verdict)", False),
        ("figures = 3", False),
    ],
)
def test_figure_call_pattern(source: str, expected: bool):
    assert bool(FIGURE_CALL.search(source)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_smoke_mode(path: Path, tmp_path: Path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DEEPCOLLAPSE_SMOKE", "1")
    monkeypatch.setenv("DEEPCOLLAPSE_RESULTS", str(tmp_path / "results"))
    # Agg in the environment: the notebooks must switch to inline plotting themselves
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [(i, c) for i, c in enumerate(code) if FIGURE_TAG in c.metadata.get("tags", [])]
    assert figures
    for i, cell in figures:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"figure cell {i} shows no image"
