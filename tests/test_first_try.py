"""A first-time user, end to end: build the wheel, install it into a fresh virtual environment
(first the core, then the extras with the pinned CPU torch), and from a folder outside the
repository run every command and every Python snippet of the README. Where JSON is promised, the
output must parse with a strict parser (NaN or Infinity would be refused).

Marked slow (about two minutes); it runs in CI (`make test`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TORCH = "torch==2.13.0"  # the CPU wheel this project's machines carry (scripts/setup.sh)

#: flags appended to a README command so that it runs in seconds (a later flag wins)
TINY = {
    "sweep": ["--depths", "0,1", "--seeds", "0", "--epochs", "3", "--per-class", "5",
              "--no-budget-check", "--workers", "1"],
    "train": ["--epochs", "3", "--per-class", "5", "--test-per-class", "2"],
}


def strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def readme_commands() -> list[list[str]]:
    """Every `deepcollapse …` line of the README's bash blocks, continuation lines joined and
    optional [..] parts dropped; the Ray cluster example (it needs a cluster) is left out."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("deepcollapse ") or "--backend ray" in line:
                continue
            out.append(shlex.split(re.sub(r"\[[^\]]*\]", "", line)))
    return out


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_readme_commands_are_the_ones_this_test_knows():
    """Every README command is one the test can run quickly; a new one must be added here."""
    subcommands = [c[1] for c in readme_commands()]
    assert set(subcommands) <= {"presets", "sweep", "report", "train", "ufm", "measure"}
    for sub in ("presets", "sweep", "report", "train", "ufm", "measure"):
        assert sub in subcommands, sub
    quick_start = README.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    assert [ln.split("#")[0].strip() for ln in quick_start.strip().splitlines()] == [
        "make demo", "make test"]
    assert len(readme_snippets()) >= 3


class User:
    """A shell in a fresh folder outside the repository, with a fresh virtual environment."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.work = home / "work"
        self.work.mkdir()
        self.venv = home / "venv"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", PATH=f"{self.venv / 'bin'}:"
                   + env.get("PATH", ""), PIP_DISABLE_PIP_VERSION_CHECK="1")
        self.env = env

    def run(self, *args: str, timeout: int = 300, check: bool = True
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.work, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def deepcollapse(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(self.venv / "bin" / "deepcollapse"), *args, check=check)


@pytest.mark.slow
def test_a_new_user_follows_the_readme(tmp_path):
    user = User(tmp_path)
    # the wheel, built from the source tree (no network: the build backend is installed)
    dist = tmp_path / "dist"
    user.run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(dist), str(ROOT))
    (wheel,) = dist.glob("deepcollapse-*.whl")
    user.run(sys.executable, "-m", "venv", str(user.venv))

    # 1. the core: the UFM and the command, nothing heavy
    user.run(user.python, "-m", "pip", "install", "-q", str(wheel), timeout=600)
    site = user.run(user.python, "-c", "import numpy, scipy, sys; import importlib.util as u; "
                    "print([m for m in ('torch', 'cvxpy', 'matplotlib', 'pandas') "
                    "if u.find_spec(m)])")
    assert site.stdout.strip() == "[]"
    assert user.deepcollapse("--help").stdout.startswith("usage: deepcollapse")
    solved = strict_json(user.deepcollapse(
        "ufm", "solve", "--loss", "ce", "--features", "layernorm", "--classes", "10",
        "--per-class", "100", "--width", "64", "--lam-w", "0.005", "--certify", "--quiet",
        "--json").stdout)
    assert solved["solution"]["value"] == pytest.approx(0.02275936746, rel=1e-9)
    assert solved["certificate"]["certified"] and solved["certificate"]["solver"] == "DUAL"
    missing = user.deepcollapse("train", "--dataset", "digits", check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "pip install 'deepcollapse[torch]'" in missing.stderr

    # 2. the extras (the pinned CPU torch, as scripts/setup.sh does)
    user.run(user.python, "-m", "pip", "install", "-q", f"{wheel}[certify,train]", TORCH,
             timeout=900)

    # 3. the README's Python snippets, in order, in the user's folder
    for i, snippet in enumerate(readme_snippets()):
        proc = user.run(user.python, "-c", snippet, check=False, timeout=600)
        assert proc.returncode == 0, (i, snippet[:200], proc.stderr[-3000:])
    assert (user.work / "features.npz").exists()  # written by the measure snippet
    assert (user.work / "runs" / "rn1-L3" / "metrics.json").exists()  # the continuation ran

    # 4. every README command (made tiny), then again with --json: strict JSON
    for cmd in readme_commands():
        sub = cmd[1]
        args = [*cmd[1:], *TINY.get(sub, [])]
        if sub == "train":
            args += ["--quiet"]
        plain = user.deepcollapse(*args)
        assert plain.stdout.strip(), cmd
        doc = strict_json(user.deepcollapse(*args, "--json").stdout)
        assert doc["schema_version"] == 1, cmd
        if sub == "sweep":
            assert doc["n_runs"] == 2 and Path(user.work / doc["out_dir"]).is_dir()
        if sub == "train":
            assert (user.work / doc["run_dir"] / "checkpoint.pt").exists()
        if sub == "measure":
            assert doc["gap"] >= 0 and "optimum_value" in doc
    for module in ("deepcollapse", "ufm", "deepnet", "reduction"):
        version = user.run(user.python, "-m", module, "--version").stdout.strip()
        assert re.fullmatch(r"deepcollapse \d+\.\d+\.\d+.*", version), (module, version)
