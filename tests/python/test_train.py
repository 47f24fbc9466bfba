"""The training command end to end: every model kind, evaluation of checkpoints, seeds, errors,
resume after killing a real training process, and torchrun with 2 processes (gloo, CPU)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import coupled_mamba
from coupled_mamba import cli, train
from coupled_mamba.modules import MODEL_KINDS
from mmsa_files import make_mmsa, write_mmsa

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(coupled_mamba.__file__)))
TINY_MODEL = ["--d-model", "16", "--d-state", "8", "--seq-len", "8", "--n-layers", "1", "--n-heads", "2"]
TINY = ["--n-train", "40", "--n-valid", "16", "--n-test", "24", "--epochs", "1", "--batch-size", "16",
        "--quiet", *TINY_MODEL]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _json(path):
    with open(path) as f:
        return json.load(f)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _same_weights(a, b, atol=0.0):
    sa, sb = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        if atol == 0.0:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_kind_trains_and_evaluates(tmp_path, kind, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--model", kind, "--out", str(out)]) == 0
    seed_dir = out / "seed-0"
    for f in ("config.json", "results.json"):
        assert (out / f).is_file()
    for f in ("metrics.csv", "results.json", "curve.png", "best.pt", "last.pt"):
        assert (seed_dir / f).is_file(), f
    res = _json(seed_dir / "results.json")
    assert res["best_epoch"] == 1 and res["model"]["kind"] == kind
    assert set(res["test"]) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_3",
                                "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}
    rows = _csv(seed_dir / "metrics.csv")
    assert len(rows) == 1 and {"epoch", "train_loss", "valid_loss", "valid_MAE"} <= set(rows[0])
    assert (seed_dir / "curve.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert f"test metrics of {kind} on synthetic" in printed and "MAE" in printed
    # the checkpoint reproduces the test metrics
    assert cli.main(["evaluate", str(seed_dir / "best.pt"), "--device", "cpu"]) == 0
    assert "identical to the metrics recorded at training time" in capsys.readouterr().out
    assert train.evaluate_checkpoint(str(seed_dir / "best.pt"))["metrics"] == res["test"]
    assert _json(out / "results.json")["test"]["mean"] == res["test"]


def test_classification_and_modality_subset(tmp_path):
    out = tmp_path / "cls"
    argv = [*TINY, "--task", "classification", "--modalities", "c", "a", "--out", str(out)]
    assert train.main(argv) == 0
    res = _json(out / "seed-0" / "results.json")
    assert set(res["test"]) == {"Mult_acc_3", "F1_score_3", "Non0_acc_2", "Non0_F1_score"}
    assert res["select"] == "Mult_acc_3" and res["model"]["input_dims"] == [12, 16]
    assert train.evaluate_checkpoint(str(out / "seed-0" / "best.pt"))["metrics"] == res["test"]


def test_mmsa_file_through_the_command(tmp_path, capsys):
    data = write_mmsa(tmp_path / "aligned_50.pkl", make_mmsa("mosei_aligned", sizes=(20, 8, 8)))
    out = tmp_path / "mosei"
    argv = ["--dataset", "mosei", "--data", data, "--epochs", "2", "--batch-size", "8", "--quiet",
            "--out", str(out), *TINY_MODEL]
    assert train.main(argv) == 0
    res = _json(out / "seed-0" / "results.json")
    assert "Non0_acc_2" in res["test"] and res["model"]["input_dims"] == [768, 74, 35]
    moved = tmp_path / "elsewhere.pkl"
    os.replace(data, moved)
    capsys.readouterr()
    assert train.evaluate_main([str(out / "seed-0" / "best.pt"), "--data", str(moved), "--json",
                                str(tmp_path / "m.json")]) == 0
    assert "identical" in capsys.readouterr().out
    assert _json(tmp_path / "m.json")["metrics"] == res["test"]


def test_seeds_report_mean_and_std(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert train.main([*TINY, "--seeds", "1", "2", "--out", str(out)]) == 0
    summary = _json(out / "results.json")
    assert summary["seeds"] == [1, 2] and set(summary["per_seed"]) == {"1", "2"}
    maes = [summary["per_seed"][s]["test"]["MAE"] for s in ("1", "2")]
    assert summary["test"]["mean"]["MAE"] == pytest.approx(sum(maes) / 2, abs=1e-4)
    assert summary["test"]["std"]["MAE"] == pytest.approx(abs(maes[0] - maes[1]) / 2 ** 0.5, abs=1e-4)
    assert "mean ± std over seeds 1 2" in capsys.readouterr().out
    assert cli.main(["summarize", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | dataset | seeds | Has0_acc_2")
    assert table[2].startswith("| coupled-mean | synthetic | 1 2 | ")
    assert f"{summary['test']['mean']['MAE']:.4f} ± {summary['test']['std']['MAE']:.4f}" in table[2]
    assert cli.main(["summarize", str(tmp_path)]) == 2
    # --resume of a finished run trains nothing and reports the same
    assert train.main(["--resume", "--out", str(out), "--quiet"]) == 0
    assert _json(out / "results.json")["test"] == summary["test"]


def test_usage_and_data_errors(tmp_path, capsys):
    assert cli.main([]) == 2
    assert "coupled-mamba {train,evaluate,summarize}" in capsys.readouterr().out
    assert cli.main(["fit"]) == 2
    assert train.main(["--dataset", "mosei"]) == 2
    assert "needs --data" in capsys.readouterr().err
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    assert train.main(["--dataset", "sims", "--data", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "pickle" in err and "Traceback" not in err
    assert train.main([*TINY, "--select", "BLEU", "--out", str(tmp_path / "y")]) == 2
    assert "--select BLEU" in capsys.readouterr().err
    assert train.main([*TINY, "--loss", "ce", "--out", str(tmp_path / "z")]) == 2
    assert train.main([*TINY, "--modalities", "text"]) == 2
    out = tmp_path / "once"
    assert train.main([*TINY, "--out", str(out)]) == 0
    assert train.main([*TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train.main([*TINY, "--out", str(out), "--overwrite"]) == 0
    assert train.evaluate_main([str(tmp_path / "missing.pt")]) == 2


def test_default_output_folder_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(TINY) == 0
    assert train.main(TINY) == 0
    assert (tmp_path / "runs" / "synthetic-coupled-mean" / "results.json").is_file()
    assert (tmp_path / "runs" / "synthetic-coupled-mean-2" / "results.json").is_file()


# ----------------------------------------------------------------------------- resume after a kill

RESUME_ARGS = ["--n-train", "96", "--n-valid", "16", "--n-test", "24", "--epochs", "3", "--batch-size", "8",
               "--checkpoint-every", "1", "--threads", "1", "--quiet", *TINY_MODEL]


def _start(argv):
    return subprocess.Popen([sys.executable, "-m", "coupled_mamba.train", *argv], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_when(proc, cond, timeout=240.0):
    """SIGKILL proc as soon as cond() holds; returns its exit status."""
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"training ended (status {proc.returncode}) before it could be killed:\n"
                        + proc.stdout.read().decode())
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("training did not reach the kill point in time")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return proc.returncode


def _last_state(path):
    try:
        return torch.load(path, weights_only=True)["state"]
    except Exception:  # not written yet
        return None


def test_resume_after_killing_a_real_training_process(tmp_path):
    killed = tmp_path / "killed"
    last = killed / "seed-0" / "last.pt"
    # 1st kill: right after the first mid-epoch checkpoint (epoch 1, batch 1)
    rc = _kill_when(_start([*RESUME_ARGS, "--out", str(killed)]), last.exists)
    assert rc == -signal.SIGKILL
    first = _last_state(last)
    assert first["epoch"] == 0 and first["batch"] >= 1
    # 2nd kill: the resumed process, once it has checkpointed past the first epoch
    def past_first_epoch():  # any later state, before the run finishes
        st = _last_state(last) or {}
        return st.get("epoch", 0) >= 1 and not st.get("finished", False)

    rc = _kill_when(_start(["--resume", "--out", str(killed), "--quiet"]), past_first_epoch)
    assert rc == -signal.SIGKILL
    # resume to the end
    done = subprocess.run([sys.executable, "-m", "coupled_mamba.train", "--resume", "--out", str(killed)],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout + done.stderr

    whole = tmp_path / "whole"
    done = subprocess.run([sys.executable, "-m", "coupled_mamba.train", *RESUME_ARGS, "--out", str(whole)],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    a, b = _json(killed / "seed-0" / "results.json"), _json(whole / "seed-0" / "results.json")
    for k in ("best_epoch", "epochs_run", "valid", "test"):
        assert a[k] == b[k], k
    assert _json(killed / "results.json")["test"] == _json(whole / "results.json")["test"]
    _same_weights(killed / "seed-0" / "best.pt", whole / "seed-0" / "best.pt")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_csv(killed / "seed-0" / "metrics.csv")) == strip(_csv(whole / "seed-0" / "metrics.csv"))


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_matches_one(tmp_path):
    args = ["--n-train", "48", "--n-valid", "16", "--n-test", "24", "--epochs", "2", "--batch-size", "12",
            "--dropout", "0", "--device", "cpu", *TINY_MODEL]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "coupled_mamba.train", *args, "--out", str(tmp_path / "ddp")],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert "2 processes (gloo)" in ddp.stdout
    single = subprocess.run([sys.executable, "-m", "coupled_mamba.train", *args, "--threads", "1",
                             "--out", str(tmp_path / "one")], env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    # the same updates up to float rounding: each process takes half of every global batch
    _same_weights(tmp_path / "ddp" / "seed-0" / "best.pt", tmp_path / "one" / "seed-0" / "best.pt", atol=1e-5)
    a, b = _json(tmp_path / "ddp" / "results.json"), _json(tmp_path / "one" / "results.json")
    assert a["test"]["mean"]["MAE"] == pytest.approx(b["test"]["mean"]["MAE"], abs=2e-4)
    ra = _csv(tmp_path / "ddp" / "seed-0" / "metrics.csv")
    rb = _csv(tmp_path / "one" / "seed-0" / "metrics.csv")
    for x, y in zip(ra, rb):
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), abs=1e-4)
        assert float(x["valid_loss"]) == pytest.approx(float(y["valid_loss"]), abs=1e-4)


def test_progress_bars_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = [a for a in TINY if a != "--quiet"]
    assert train.main([*argv, "--epochs", "2", "--out", str(tmp_path / "bars")]) == 0
    err = capsys.readouterr().err
    assert "seed 0: 100%" in err and "2/2" in err and "epoch 2/2" in err


def test_basicmotions_through_the_command(tmp_path):
    import importlib.util

    if importlib.util.find_spec("sktime") is None:
        pytest.skip("sktime (the basicmotions extra) is not installed")
    out = tmp_path / "bm"
    assert train.main(["--dataset", "basicmotions", "--epochs", "2", "--quiet", "--out", str(out),
                       *TINY_MODEL]) == 0
    res = _json(out / "seed-0" / "results.json")
    assert set(res["test"]) == {"Acc", "F1_score"} and res["select"] == "Acc"
    assert res["model"]["num_classes"] == 4 and res["model"]["input_dims"] == [3, 3]
    assert train.evaluate_checkpoint(str(out / "seed-0" / "best.pt"))["metrics"] == res["test"]


# ----------------------------------------------------------------------------- the Python API and tiers


def test_fit_matches_the_command(tmp_path):
    """coupled_mamba.train.fit runs the command's loop in memory: same weights, history and metrics."""
    from coupled_mamba.data import load_data

    out = tmp_path / "cmd"
    argv = ["--n-train", "40", "--n-valid", "16", "--n-test", "24", "--epochs", "2", "--batch-size", "16",
            "--quiet", "--d-model", "16", "--d-state", "8", "--seq-len", "8", "--n-layers", "1"]
    assert train.main([*argv, "--out", str(out)]) == 0
    splits = load_data("synthetic", n_train=40, n_valid=16, n_test=24)
    r = train.fit(splits, "coupled-mean", epochs=2, batch_size=16, d_model=16, d_state=8, seq_len=8, n_layers=1,
                  device="cpu")
    res = _json(out / "seed-0" / "results.json")
    assert r.metrics == {"valid": res["valid"], "test": res["test"]} and r.best_epoch == res["best_epoch"]
    strip = lambda rows: [{k: str(v) for k, v in x.items() if k != "seconds"} for x in rows]  # noqa: E731
    assert strip(r.history) == strip(_csv(out / "seed-0" / "metrics.csv"))
    best = torch.load(out / "seed-0" / "best.pt", weights_only=True)["model"]
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, best[k]), k
    assert not r.model.training
    with pytest.raises(ValueError, match="lr"):
        train.fit(splits, epochs=1, lr=float("nan"))
    with pytest.raises(ValueError, match="d_state"):
        train.fit(splits, epochs=1, d_state=300)
    with pytest.raises(ValueError, match="colour"):
        train.fit(splits, epochs=1, colour="red")


def test_importing_the_package_does_not_import_the_application():
    # (torch itself imports tqdm when it is installed, so only matplotlib is checked of the extra)
    code = ("import sys, coupled_mamba, coupled_mamba.modules; "
            "bad = [m for m in ('coupled_mamba.train', 'coupled_mamba.cli', 'coupled_mamba.data', 'matplotlib') "
            "if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_metric_names_are_the_keys_compute_metrics_returns():
    import numpy as np

    from coupled_mamba import metrics

    rng = np.random.default_rng(0)
    cases = {"mosi": (rng.normal(size=9), rng.normal(size=9)), "sims": (rng.uniform(-1, 1, 9), rng.uniform(-1, 1, 9)),
             "classification": (rng.normal(size=(9, 4)), rng.integers(0, 4, 9)),
             "sentiment3": (rng.normal(size=(9, 3)), rng.integers(0, 3, 9)),
             "regression": (rng.normal(size=9), rng.normal(size=9))}
    assert set(cases) == set(metrics.METRIC_FAMILIES)
    for family, (p, y) in cases.items():
        classes = p.shape[1] if p.ndim == 2 else 1
        assert list(metrics.compute_metrics(family, p, y)) == metrics.metric_names(family, classes), family


def test_mmsa_metrics_mode_through_the_command(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--metrics", "mmsa", "--out", str(out)]) == 0
    res = _json(out / "seed-0" / "results.json")
    assert "Mult_acc_3" not in res["test"] and {"Has0_acc_2", "MAE", "Corr"} <= set(res["test"])
    assert _json(out / "config.json")["metrics"] == "mmsa"
    assert train.evaluate_checkpoint(str(out / "seed-0" / "best.pt"))["metrics"] == res["test"]
    assert train.main([*TINY, "--metrics", "mmsa", "--select", "Mult_acc_3", "--out", str(tmp_path / "x")]) == 2
    assert "--select Mult_acc_3: expected one of" in capsys.readouterr().err
