"""The one command and its output policy (deepcollapse.output): --version and --help text on every
subcommand, strict JSON with a schema_version, one-line errors naming a missing extra, no torch
or matplotlib where a command does not need them, Ctrl-C, progress off without a terminal, and
`train` without --out."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepcollapse import __version__
from deepcollapse.cli import main
from deepcollapse.output import SCHEMA_VERSION, dumps, jsonable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = (["ufm", "solve"], ["train"], ["sweep"], ["report"], ["presets"], ["measure"])


def strict(text: str):
    """json.loads that refuses NaN and ±Infinity, as strict parsers do."""

    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------ flags, help


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s))
def test_every_subcommand_takes_version(sub, capsys):
    assert main([*sub, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deepcollapse {__version__}"


def _parsers():
    from deepnet.cli import ArgumentParser, add_train_arguments
    from reduction.cli import build_parser as reduction_parser
    from ufm.cli import build_parser as ufm_parser

    train = ArgumentParser(prog="deepcollapse train")
    add_train_arguments(train)
    out = {"train": train}
    for top in (ufm_parser(), reduction_parser()):
        for action in top._actions:
            if isinstance(action, argparse._SubParsersAction):
                out.update(action.choices)
    return out


def test_every_flag_has_help_and_usage_says_deepcollapse():
    parsers = _parsers()
    assert set(parsers) == {"solve", "train", "sweep", "report", "presets", "measure"}
    for name, parser in parsers.items():
        assert parser.format_usage().startswith("usage: deepcollapse"), name
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue  # a hidden alias (train's former --no-progress)
            assert action.help and action.help.strip(), (name, action.option_strings)
        opts = {o for a in parser._actions for o in a.option_strings}
        assert {"--version", "--json"} <= opts, name
        assert "--no-progress" not in parser.format_help()
    # the one spelling of "no progress"
    for name in ("solve", "train", "sweep", "measure"):
        assert "--quiet" in parsers[name].format_help()


def test_train_flags_cover_every_config_field_with_its_own_help():
    import dataclasses

    from deepnet import RunConfig
    from deepnet.cli import FIELD_HELP

    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"data_options"}
    assert fields == set(FIELD_HELP)


def test_top_level_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: deepcollapse {ufm,train,sweep,report,presets,measure}")
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'frobnicate'") and err.count("\n") == 1


# ------------------------------------------------------------------------------ JSON


def test_jsonable_is_strict():
    import numpy as np

    doc = strict(dumps({"a": float("nan"), "b": [np.float64("inf"), np.int64(3)],
                        "c": np.arange(2.0), "d": Path("x"), "e": {"f": -float("inf")}}))
    assert doc == {"schema_version": SCHEMA_VERSION, "a": None, "b": [None, 3], "c": [0.0, 1.0],
                   "d": "x", "e": {"f": None}}
    assert next(iter(doc)) == "schema_version"
    assert jsonable((1, 2.5)) == [1, 2.5]


def test_presets_and_ufm_json_are_strict(capsys):
    assert main(["presets", "--json"]) == 0
    doc = strict(capsys.readouterr().out)
    assert doc["schema_version"] == SCHEMA_VERSION and "cpu-rn1-mnist1d" in doc["presets"]
    # a label-count problem whose geometry has NaN entries: null in the JSON
    assert main(["ufm", "solve", "--loss", "ce", "--classes", "3", "--per-class", "4",
                 "--width", "2", "--lam-w", "0.01", "--features", "layernorm", "--json"]) == 0
    captured = capsys.readouterr()
    doc = strict(captured.out)
    assert doc["solution"]["status"] == "not_certified"
    assert captured.err.startswith("warning: ufm.solve: global optimality is not certified")
    assert captured.err.count("\n") == 1


@pytest.mark.slow
def test_report_json_is_strict(tiny_sweep_dir, run_py):
    """report --json prints strict JSON. (report does import deepnet, hence torch: it checks every
    row's settings against the sweep's fingerprint through RunConfig, README "Reliability".)"""
    code = (
        "import sys; from deepcollapse.cli import main; "
        f"sys.exit(main(['report', {str(tiny_sweep_dir)!r}, '--json']))"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr
    doc = strict(proc.stdout)
    assert doc["schema_version"] == SCHEMA_VERSION and doc["n_runs"] == 6
    # the sweep's own summary.json holds NaN (undefined statistics); the printed JSON has null
    assert "NaN" in (tiny_sweep_dir / "summary.json").read_text()
    assert "NaN" not in proc.stdout and "null" in proc.stdout


# ------------------------------------------------------------------------------ imports


@pytest.mark.parametrize(
    "argv,absent",
    [
        (["--help"], ("torch", "matplotlib", "scipy.stats", "deepnet", "cvxpy")),
        (["presets"], ("torch", "matplotlib", "scipy.stats", "deepnet", "cvxpy")),
        (["ufm", "solve", "--loss", "ce", "--classes", "4", "--per-class", "5,4,3,2",
          "--width", "8", "--lam-w", "0.01", "--features", "layernorm"],
         ("torch", "matplotlib", "scipy.stats", "deepnet", "reduction", "cvxpy")),
    ],
    ids=["help", "presets", "ufm"],
)
def test_fast_commands_import_no_torch_or_matplotlib(argv, absent, run_py):
    code = (
        "import sys, json; from deepcollapse.cli import main; "
        f"rc = main({argv!r}); "
        f"print(json.dumps([m for m in {list(absent)!r} if m in sys.modules]), file=sys.stderr); "
        "sys.exit(rc)"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_measure_imports_torch_only(tmp_path, run_py):
    import numpy as np

    import ufm

    p = ufm.Problem("ce", 3, 4, 6, 0.01, features="layernorm")
    sol = ufm.solve(p)
    path = tmp_path / "f.npz"
    np.savez(path, features=sol.H.T, labels=p.labels, W=sol.W)
    code = (
        "import sys, json; from deepcollapse.cli import main; "
        f"rc = main(['measure', {str(path)!r}, '--lam', '0.01', '--json']); "
        "print(json.dumps([m for m in ('matplotlib', 'scipy.stats', 'deepnet', 'cvxpy') "
        "if m in sys.modules]), file=sys.stderr); sys.exit(rc)"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    doc = strict(proc.stdout)
    assert abs(doc["gap"]) < 1e-9 and doc["optimum_status"] == "closed_form"


# ------------------------------------------------------------------------------ missing extras


@pytest.mark.parametrize(
    "blocked,argv,extra",
    [
        ("torch", ["train", "--dataset", "digits"], "torch"),
        ("torch", ["measure", "x.npz", "--lam", "0.1"], "torch"),
        ("cvxpy", ["ufm", "solve", "--loss", "ce", "--classes", "3", "--per-class", "2",
                   "--width", "4", "--lam-w", "0.1", "--lam-h", "0.1", "--certify", "--quiet",
                   "--certificate-method", "sdp"], "certify"),
        ("matplotlib", ["report", "nowhere"], "plots"),
    ],
    ids=["train", "measure", "certify", "report"],
)
def test_a_missing_extra_is_one_line_naming_it(blocked, argv, extra, tmp_path, run_py):
    # sys.modules[name] = None makes `import name` raise ImportError, as if not installed
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; from deepcollapse.cli import main; "
        f"sys.exit(main({argv!r}))"
    )
    if argv[0] == "measure":
        import numpy as np

        np.savez(tmp_path / "x.npz", features=np.eye(3), labels=np.arange(3), W=np.eye(3))
    proc = run_py(code, cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and f"pip install 'deepcollapse[{extra}]'" in lines[0], proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_certify_auto_without_cvxpy_uses_the_dual_bound(run_py):
    code = ("import sys; sys.modules['cvxpy'] = None; import ufm; "
            "p = ufm.Problem('ce', 4, [5, 3, 2, 1], 8, 0.01, features='layernorm'); "
            "c = ufm.certify(ufm.solve(p)); assert c.solver == 'DUAL' and c.certified, c")
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr


def test_collect_without_torch_names_the_extra(run_py):
    proc = run_py("import sys; sys.modules['torch'] = None; from reduction import collect")
    assert proc.returncode == 1
    assert "pip install 'deepcollapse[torch]'" in proc.stderr.splitlines()[-1]


# ------------------------------------------------------------------------------ train


TRAIN = ["train", "--dataset", "digits", "--per-class", "3", "--test-per-class", "2",
         "--width", "8", "--epochs", "4", "--device", "cpu", "--num-threads", "1"]


@pytest.mark.slow
def test_train_without_out_writes_a_default_folder_and_resumes_it(tmp_path, run_cli):
    first = run_cli(*TRAIN, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    doc = strict(first.stdout)
    run_dir = Path(doc["run_dir"])
    assert run_dir.parts[0] == "runs" and run_dir.name.startswith("rn1-L2-digits-s0-")
    assert (tmp_path / run_dir / "checkpoint.pt").exists()
    assert (tmp_path / run_dir / "metrics.json").exists()
    # no progress bar when stderr is not a terminal, even without --quiet
    assert "\r" not in first.stderr and first.stderr == ""
    # the same command finds the same folder (finished: nothing retrained) and says where
    again = run_cli(*TRAIN, cwd=tmp_path)
    assert again.returncode == 0 and f"saved in       {run_dir}" in again.stdout
    # another config gets another folder
    other = run_cli(*TRAIN, "--seed", "1", "--json", cwd=tmp_path)
    assert Path(strict(other.stdout)["run_dir"]) != run_dir


@pytest.mark.slow
def test_ctrl_c_prints_one_line_on_how_to_resume_and_exits_130(tmp_path, command_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepcollapse", "train", "--dataset", "digits", "--per-class", "20",
         "--width", "16", "--depth", "4", "--optimizer", "lbfgs", "--epochs", "1000000",
         "--checkpoint-every", "20", "--eval-every", "20", "--device", "cpu"],
        cwd=tmp_path, env=command_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # the group gets the signal, as from a terminal's Ctrl-C
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("runs/*/checkpoint.pt")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("interrupted: rerun the same command"), err
    assert "checkpoint in runs/rn1-L4-digits-s0-" in lines[0]
