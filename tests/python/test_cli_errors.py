"""Every command-line failure is one ``error:`` line naming the option or file and what was
expected, with exit status 2 and no traceback: bad numbers, and damaged, truncated, random or
foreign run files given to train --resume, evaluate and summarize."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import coupled_mamba
from coupled_mamba import cli

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(coupled_mamba.__file__)))
TINY = ["--n-train", "24", "--n-valid", "8", "--n-test", "8", "--epochs", "1", "--batch-size", "8", "--quiet",
        "--d-model", "16", "--d-state", "8", "--seq-len", "8", "--n-layers", "1"]


def _fails_cleanly(capsys, argv, *fragments):
    """Run the command in this process; it must exit 2 with one error line holding ``fragments``."""
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for f in fragments:
        assert str(f) in lines[0], (f, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- options out of range

BAD_OPTIONS = [
    (["--d-state", "300"], "--d-state", "[1, 256]"),
    (["--d-state", "0"], "--d-state"),
    (["--lr", "nan"], "--lr", "> 0"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "fast"], "--lr", "'fast'"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--grad-clip", "-0.5"], "--grad-clip"),
    (["--grad-clip", "inf"], "--grad-clip"),
    (["--dropout", "1"], "--dropout", "[0, 1)"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "2.5"], "--batch-size", "integer"),
    (["--eval-batch-size", "-4"], "--eval-batch-size"),
    (["--patience", "-1"], "--patience", ">= 0"),
    (["--checkpoint-every", "-2"], "--checkpoint-every"),
    (["--seed", "-1"], "--seed"),
    (["--seeds", "1", "-2"], "--seeds"),
    (["--data-seed", "-1"], "--data-seed"),
    (["--threads", "0"], "--threads"),
    (["--n-train", "0"], "--n-train"),
    (["--d-model", "0"], "--d-model"),
    (["--n-layers", "-1"], "--n-layers"),
    (["--seq-len", "0"], "--seq-len"),
    (["--n-heads", "0"], "--n-heads"),
    (["--dt-rank", "0"], "--dt-rank"),
    (["--expand", "0"], "--expand"),
    (["--d-conv", "0"], "--d-conv"),
    (["--device", "toaster"], "--device toaster"),
    (["--model", "coupled-max"], "--model"),
]


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=lambda c: " ".join(c[0]))
def test_train_option_out_of_range(capsys, tmp_path, case):
    argv, *fragments = case
    _fails_cleanly(capsys, ["train", *argv, "--out", str(tmp_path / "never")], *fragments)
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_other_commands_option_out_of_range(capsys, tmp_path):
    _fails_cleanly(capsys, ["evaluate", str(tmp_path / "x.pt"), "--batch-size", "0"], "--batch-size")
    _fails_cleanly(capsys, ["evaluate", str(tmp_path / "x.pt"), "--threads", "-1"], "--threads")
    _fails_cleanly(capsys, ["summarize", str(tmp_path), "--split", "train"], "--split")
    _fails_cleanly(capsys, ["frobnicate"], "frobnicate")


# ----------------------------------------------------------------------------- damaged run files


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-errors") / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _rewrite_torch(path, change):
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path):
    path.write_bytes(os.urandom(4096))


def _reshape_first_weight(ck):
    k = sorted(ck["model"])[0]
    ck["model"][k] = torch.zeros(*ck["model"][k].shape, 2)


LAST_PT_DAMAGE = {
    "truncated": (_truncate, "not a readable resume state"),
    "random bytes": (_random, "not a readable resume state"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable resume state"),
    "foreign: a list": (lambda p: torch.save([1, 2, 3], p), "not a coupled-mamba resume state"),
    "foreign: a best.pt": (lambda p: shutil.copy(p.parent / "best.pt", p), "not a coupled-mamba resume state"),
    "tampered: weight shape": (lambda p: _rewrite_torch(p, _reshape_first_weight), "does not fit this run's model"),
    "tampered: missing weight": (lambda p: _rewrite_torch(p, lambda ck: ck["model"].popitem()),
                                 "does not fit this run's model"),
    "tampered: optimiser state": (
        lambda p: _rewrite_torch(p, lambda ck: ck["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(7))),
        "optimiser state 'exp_avg'"),
    "tampered: epoch": (lambda p: _rewrite_torch(p, lambda ck: ck["state"].__setitem__("epoch", -3)), "'epoch'"),
    "tampered: history": (lambda p: _rewrite_torch(p, lambda ck: ck["state"].pop("history")), "'history'"),
    "tampered: state": (lambda p: _rewrite_torch(p, lambda ck: ck.__setitem__("state", "x")), "'state'"),
}


@pytest.mark.parametrize("damage", LAST_PT_DAMAGE, ids=str)
def test_resume_with_damaged_last_pt(capsys, tmp_path, finished_run, damage):
    run = _copy(finished_run, tmp_path)
    fn, fragment = LAST_PT_DAMAGE[damage]
    fn(run / "seed-0" / "last.pt")
    _fails_cleanly(capsys, ["train", "--resume", "--out", str(run), "--quiet"], run / "seed-0" / "last.pt", fragment)


RUN_JSON_DAMAGE = {
    "config.json: not JSON": ("config.json", "{ nope", "not readable as a run configuration"),
    "config.json: a list": ("config.json", "[]", "expected a run configuration"),
    "config.json: missing keys": ("config.json", '{"dataset": "synthetic"}', "missing"),
    "config.json: lr nan": ("config.json", None, "lr"),
    "config.json: d_state 300": ("config.json", None, "d_state"),
    "seed results.json: not JSON": ("seed-0/results.json", "\x00\x01", "not readable as a seed's results"),
    "seed results.json: incomplete": ("seed-0/results.json", '{"seed": 0}', "not a seed's results"),
}


@pytest.mark.parametrize("damage", RUN_JSON_DAMAGE, ids=str)
def test_resume_with_damaged_json(capsys, tmp_path, finished_run, damage):
    run = _copy(finished_run, tmp_path)
    name, text, fragment = RUN_JSON_DAMAGE[damage]
    path = run / name
    if text is None:
        cfg = json.loads(path.read_text())
        if "lr" in damage:
            cfg["lr"] = float("nan")
        else:
            cfg["model_options"]["d_state"] = 300
        text = json.dumps(cfg)
    path.write_text(text)
    _fails_cleanly(capsys, ["train", "--resume", "--out", str(run), "--quiet"], path, fragment)


def _edit_config(**change):
    return lambda ck: ck["model_config"].update(change)


BEST_PT_DAMAGE = {
    "missing": (lambda p: p.unlink(), "no such checkpoint"),
    "truncated": (_truncate, "not a readable checkpoint"),
    "random bytes": (_random, "not a readable checkpoint"),
    "foreign: a last.pt": (lambda p: shutil.copy(p.parent / "last.pt", p), "not a coupled-mamba checkpoint"),
    "another kind": (lambda p: _rewrite_torch(p, _edit_config(kind="transformer")), "do not fit"),
    "unknown kind": (lambda p: _rewrite_torch(p, _edit_config(kind="coupled-max")), "kind"),
    "unknown option": (lambda p: _rewrite_torch(p, _edit_config(bogus=1)), "unknown model option 'bogus'"),
    "absurd d_state": (lambda p: _rewrite_torch(p, _edit_config(d_state=10 ** 6)), "d_state"),
    "absurd d_model": (lambda p: _rewrite_torch(p, _edit_config(d_model=10 ** 6)), "do not fit"),
    "bad input_dims": (lambda p: _rewrite_torch(p, _edit_config(input_dims="abc")), "input_dims"),
    "wrong weight": (lambda p: _rewrite_torch(p, _reshape_first_weight), "wrong shape"),
    "missing weight": (lambda p: _rewrite_torch(p, lambda ck: ck["model"].popitem()), "missing weight"),
    "extra weight": (lambda p: _rewrite_torch(p, lambda ck: ck["model"].__setitem__("x.y", torch.ones(2))),
                     "unexpected weight"),
    "bad data source": (lambda p: _rewrite_torch(p, lambda ck: ck["data"]["source"].update(name="nope")), "nope"),
}


@pytest.mark.parametrize("damage", BEST_PT_DAMAGE, ids=str)
def test_evaluate_with_damaged_checkpoint(capsys, tmp_path, finished_run, damage):
    run = _copy(finished_run, tmp_path)
    fn, fragment = BEST_PT_DAMAGE[damage]
    best = run / "seed-0" / "best.pt"
    fn(best)
    line = _fails_cleanly(capsys, ["evaluate", str(best)], fragment)
    if damage != "bad data source":
        assert str(best) in line


SUMMARY_DAMAGE = {
    "no results.json": (None, "no results.json"),
    "not JSON": ("{", "not readable as a run summary"),
    "binary": ("\udcff", "not readable as a run summary"),
    "a number": ("3", "no 'test' metrics"),
    "no test": ('{"model": "m", "dataset": "d", "seeds": [0]}', "no 'test' metrics"),
    "no mean": ('{"model": "m", "dataset": "d", "seeds": [0], "test": {"std": {}}}', "test.mean"),
    "text metric": ('{"model": "m", "dataset": "d", "seeds": [0], "test": {"mean": {"MAE": "x"}, "std": {}}}',
                    "test.mean"),
    "std missing a metric": ('{"model": "m", "dataset": "d", "seeds": [0], "test": {"mean": {"MAE": 1.0}, '
                             '"std": {}}}', "test.std"),
    "no seeds": ('{"model": "m", "dataset": "d", "test": {"mean": {"MAE": 1.0}, "std": {"MAE": 0}}}', "'seeds'"),
    "no model": ('{"dataset": "d", "seeds": [1], "test": {"mean": {"MAE": 1.0}, "std": {"MAE": 0}}}', "'model'"),
}


@pytest.mark.parametrize("damage", SUMMARY_DAMAGE, ids=str)
def test_summarize_with_damaged_results(capsys, tmp_path, finished_run, damage):
    run = _copy(finished_run, tmp_path)
    text, fragment = SUMMARY_DAMAGE[damage]
    path = run / "results.json"
    if text is None:
        path.unlink()
    else:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    line = _fails_cleanly(capsys, ["summarize", str(finished_run), str(run)], fragment)
    assert str(run) in line


def test_the_damaged_runs_were_usable_before(capsys, finished_run):
    """The damage above is what breaks the commands: the untouched run works."""
    assert cli.main(["summarize", str(finished_run)]) == 0
    assert cli.main(["evaluate", str(finished_run / "seed-0" / "best.pt")]) == 0
    assert cli.main(["train", "--resume", "--out", str(finished_run), "--quiet"]) == 0


def test_console_script_prints_one_line(tmp_path):
    """The same through a real process: stderr is the error line alone."""
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv, fragment in ((["train", "--d-state", "300"], "--d-state"),
                           (["evaluate", str(tmp_path / "none.pt")], "none.pt")):
        r = subprocess.run([sys.executable, "-m", "coupled_mamba.cli", *argv], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "error:" in r.stderr and fragment in r.stderr, r.stderr


def test_missing_train_extra_names_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    _fails_cleanly(capsys, ["train", *TINY, "--out", str(tmp_path / "r")], "matplotlib",
                   'pip install "coupled-mamba[train]"')
    assert not (tmp_path / "r").exists()
