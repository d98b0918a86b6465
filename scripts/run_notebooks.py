"""Execute the notebooks in smoke mode and store them with their outputs (what a reader sees).

    .venv/bin/python scripts/run_notebooks.py [NAME ...]
    .venv/bin/python scripts/run_notebooks.py --full RESULTS_DIR NAME ...

``--full``: full mode, reading the presets' finished sweep folders under RESULTS_DIR (never
training: DEEPCOLLAPSE_READ_ONLY=1), so the stored outputs show the real runs.

Each notebook runs in its own folder (notebooks/), so everything it writes lands under
notebooks/results/ (not committed). Timing metadata is not recorded, so a rerun changes only what
the computation changes.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


def main(names: list[str]) -> int:
    os.environ.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    if names[:1] == ["--full"]:
        if len(names) < 3:
            print("usage: run_notebooks.py --full RESULTS_DIR NAME ...", file=sys.stderr)
            return 2
        if not Path(names[1]).is_dir():
            print(f"error: {names[1]} is not a folder of sweep results", file=sys.stderr)
            return 2
        # relative to notebooks/, where each notebook runs (no machine path in the outputs)
        results = os.path.relpath(Path(names[1]).resolve(), ROOT / "notebooks")
        names = names[2:]
        os.environ.update(DEEPCOLLAPSE_FULL="1", DEEPCOLLAPSE_RESULTS=results,
                          DEEPCOLLAPSE_READ_ONLY="1")  # fmt: skip
        os.environ.pop("DEEPCOLLAPSE_SMOKE", None)
    else:
        os.environ.update(DEEPCOLLAPSE_SMOKE="1")
        for key in ("DEEPCOLLAPSE_FULL", "DEEPCOLLAPSE_RESULTS", "DEEPCOLLAPSE_READ_ONLY"):
            os.environ.pop(key, None)
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if names:
        paths = [p for p in paths if p.stem in names or p.name in names]
    for path in paths:
        t0 = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        except CellExecutionError as err:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # the kernel's colour codes
            last = text.splitlines()[-1] if text else type(err).__name__
            print(f"error: {path.name} stopped at a cell ({last}); the stored notebook is "
                  "unchanged", file=sys.stderr)  # fmt: skip
            return 1
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        print(f"{path.name}: executed and saved in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
