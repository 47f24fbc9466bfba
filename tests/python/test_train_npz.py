"""Training on the user's own .npz data: the command (--data FILE.npz, --folds K), the Python API
(fit, cross_validate), the regression metrics, the stop on a non-finite loss and learned coupling."""
import json
import warnings

import numpy as np
import pytest
import torch

import coupled_mamba
from coupled_mamba import cli, train
from coupled_mamba.data import load_npz, save_npz
from coupled_mamba.modules import MODEL_KINDS, build_model

TINY_MODEL = ["--d-model", "16", "--d-state", "8", "--seq-len", "8", "--n-layers", "1", "--n-heads", "2"]
FAST = ["--epochs", "1", "--batch-size", "16", "--quiet", *TINY_MODEL]
TINY_OPTIONS = dict(d_model=16, d_state=8, seq_len=8, n_layers=1, n_heads=2)
N, GROUPS, CLASSES = 48, 8, 3


def make_file(path, task="classification", n=N, seed=0):
    """Two modalities of unequal lengths and rates; GROUPS subjects. gyro's length is 5 + the
    subject's number, so a sample's subject can be read back from a trained split."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) % GROUPS
    classes = rng.permutation(np.arange(n) % CLASSES)
    accel = [rng.normal(loc=c, size=(int(rng.integers(12, 31)), 3)) for c in classes]
    gyro = [rng.normal(loc=-c, size=(5 + int(g), 2)) for c, g in zip(classes, groups)]
    labels = classes if task == "classification" else (classes + rng.normal(scale=0.3, size=n)).astype(np.float32)
    save_npz(path, {"accel": accel, "gyro": gyro}, labels, groups=[f"s{g}" for g in groups],
             class_names=["a", "b", "c"] if task == "classification" else None)
    return path


def _json(path):
    with open(path) as f:
        return json.load(f)


def _subjects(ds):
    return set((ds.lengths[1].numpy() - 5).tolist())


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    return make_file(tmp_path_factory.mktemp("data") / "sensors.npz")


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_kind_trains_on_an_npz_file(tmp_path, npz_file, kind, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(npz_file), "--model", kind, *FAST, "--out", str(out)]) == 0
    cfg = _json(out / "config.json")
    assert cfg["dataset"] == "npz" and cfg["modalities"] == ["accel", "gyro"] and cfg["task"] == "classification"
    res = _json(out / "seed-0" / "results.json")
    assert set(res["test"]) == {"Acc", "F1_score"} and res["select"] == "Acc"
    assert ("coupling_weights" in res) == (kind == "coupled-learned")
    assert f"test metrics of {kind} on npz" in capsys.readouterr().out
    # evaluate rebuilds the split and the standardisation from the checkpoint alone
    assert train.evaluate_checkpoint(str(out / "seed-0" / "best.pt"))["metrics"] == res["test"]
    # the Python API on the same file gives the same metrics
    r = train.fit(load_npz(npz_file), kind, epochs=1, batch_size=16, device="cpu", **TINY_OPTIONS)
    assert r.metrics == {"valid": res["valid"], "test": res["test"]}


def test_regression_file_trains_with_regression_metrics(tmp_path, capsys):
    path = make_file(tmp_path / "reg.npz", task="regression")
    out = tmp_path / "run"
    assert train.main(["--dataset", "npz", "--data", str(path), *FAST, "--out", str(out)]) == 0
    res = _json(out / "seed-0" / "results.json")
    assert list(res["test"]) == ["MAE", "RMSE", "Corr"] and res["select"] == "MAE"
    assert res["test"]["RMSE"] >= res["test"]["MAE"] > 0
    assert train.evaluate_checkpoint(str(out / "seed-0" / "best.pt"))["metrics"] == res["test"]


def test_modalities_and_usage_errors(tmp_path, npz_file, capsys):
    out = tmp_path / "run"
    assert train.main(["--data", str(npz_file), "--modalities", "gyro", *FAST, "--out", str(out)]) == 0
    assert _json(out / "config.json")["modalities"] == ["gyro"]
    capsys.readouterr()
    assert train.main(["--data", str(npz_file), "--modalities", "text", *FAST]) == 2
    assert "'text' is not a modality of npz (accel gyro)" in capsys.readouterr().err
    assert train.main(["--dataset", "npz", *FAST]) == 2
    assert "--data FILE.npz" in capsys.readouterr().err
    assert train.main(["--folds", "3", *FAST, "--n-train", "40"]) == 2
    assert "--folds applies to .npz data" in capsys.readouterr().err
    assert train.main(["--data", str(tmp_path / "missing.npz"), *FAST]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--data", str(npz_file), "--folds", "1", *FAST])
    assert "--folds: expected an integer >= 2" in capsys.readouterr().err


def test_folds_write_per_fold_and_mean_std(tmp_path, npz_file, capsys):
    out = tmp_path / "cv"
    assert train.main(["--data", str(npz_file), "--folds", "3", *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean ± std over 3 folds" in printed
    res = _json(out / "results.json")
    assert res["folds"] == 3 and sorted(res["per_fold"]) == ["0", "1", "2"]
    accs = [res["per_fold"][str(k)]["test"]["Acc"] for k in range(3)]
    assert res["test"]["mean"]["Acc"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert res["test"]["std"]["Acc"] == pytest.approx(np.std(accs, ddof=1), abs=1e-4)
    tests = []
    for k in range(3):
        best = out / f"fold-{k}" / "seed-0" / "best.pt"
        seed_res = _json(out / f"fold-{k}" / "seed-0" / "results.json")
        assert res["per_fold"][str(k)]["test"] == seed_res["test"]
        # evaluate reproduces the fold's metrics; its data source names the fold
        ev = train.evaluate_checkpoint(str(best))
        assert ev["metrics"] == seed_res["test"] and ev["data"]["fold"] == k and ev["data"]["folds"] == 3
        parts = load_npz(**ev["data"])
        train_s, valid_s, test_s = (_subjects(parts[s]) for s in ("train", "valid", "test"))
        assert not (test_s & train_s) and not (test_s & valid_s) and not (train_s & valid_s)
        tests.append(test_s)
    # every subject is tested exactly once
    assert sorted(s for t in tests for s in t) == list(range(GROUPS))
    table = train.summarize_runs([str(out)])
    assert "(3 folds)" in table and "±" in table


def test_cross_validate_api(npz_file):
    cv = coupled_mamba.cross_validate(npz_file, folds=3, model="coupled-mean", epochs=1, batch_size=16,
                                      device="cpu", **TINY_OPTIONS)
    assert len(cv.folds) == len(cv.metrics) == 3
    accs = [m["test"]["Acc"] for m in cv.metrics]
    assert cv.mean["test"]["Acc"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert cv.std["test"]["Acc"] == pytest.approx(np.std(accs, ddof=1), abs=1e-4)
    # a list of split dicts works as well, and gives the same result
    from coupled_mamba.data import load_npz_folds

    again = train.cross_validate(load_npz_folds(npz_file, 3), model="coupled-mean", epochs=1, batch_size=16,
                                 device="cpu", **TINY_OPTIONS)
    assert again.metrics == cv.metrics
    with pytest.raises(ValueError, match="folds"):
        train.cross_validate(npz_file, folds=1)
    with pytest.raises(ValueError, match="3 split dicts"):
        train.cross_validate(load_npz_folds(npz_file, 3), folds=4)


def _nan_loss(monkeypatch):
    real = train.loop.loss_per_sample

    def poisoned(kind, out, y):
        return real(kind, out, y) * float("nan")

    monkeypatch.setattr(train.loop, "loss_per_sample", poisoned)


def test_non_finite_loss_stops_the_run(tmp_path, npz_file, monkeypatch, capsys):
    _nan_loss(monkeypatch)
    out = tmp_path / "run"
    assert train.main(["--data", str(npz_file), "--model", "coupled-sum", *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coupled-mamba train: error:")
    assert "not finite (nan) at epoch 1, batch 1 of" in err
    assert "grows like 2^L" in err and "coupled-mean" in err and "coupled-learned" in err
    assert not (out / "results.json").exists()
    assert train.main(["--data", str(npz_file), "--model", "concat", *FAST, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "at epoch 1, batch 1" in err and "grows like" not in err
    with pytest.raises(ValueError, match="not finite"):
        train.fit(load_npz(npz_file), "coupled-mean", epochs=1, batch_size=16, device="cpu", **TINY_OPTIONS)


def test_sum_coupling_past_the_float32_horizon_warns():
    with pytest.warns(RuntimeWarning, match="grows like 2\\^L"):
        build_model("coupled-sum", [3, 2], seq_len=200, d_model=8, d_state=4, n_layers=1)
    with pytest.warns(RuntimeWarning, match="about 81 steps"):
        build_model("coupled-sum", [3, 2, 4], seq_len=100, d_model=8, d_state=4, n_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model("coupled-sum", [3, 2], seq_len=100, d_model=8, d_state=4, n_layers=1)
        build_model("coupled-mean", [3, 2], seq_len=1000, d_model=8, d_state=4, n_layers=1)


def test_coupling_logits_get_no_weight_decay():
    from coupled_mamba.train.optim import build_optimizer, learned_coupling

    model = build_model("coupled-learned", [3, 2], d_model=8, d_state=4, n_layers=2)
    opt = build_optimizer(model, 1e-3, 5e-4)
    logits = {id(p) for n, p in model.named_parameters() if n.endswith("coupling_logits")}
    assert len(logits) == 2
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert {id(p) for p in free["params"]} == logits and not logits & {id(p) for p in decayed["params"]}
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    w = learned_coupling(model)
    assert np.allclose(w, 0.5) and np.array(w).shape == (2, 2, 2)
    # without coupling logits: one group, as Adam(model.parameters()) would make
    mean = build_model("coupled-mean", [3, 2], d_model=8, d_state=4, n_layers=1)
    assert len(build_optimizer(mean, 1e-3, 5e-4).param_groups) == 1 and learned_coupling(mean) is None
    # with weight decay only (zero gradient), the logits stay where they are
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("coupling_logits"):
                p.copy_(torch.tensor([[2.0, -1.0], [0.5, 0.0]]))
    before = learned_coupling(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert learned_coupling(model) == before


def test_coupling_logits_learning_rate_scale(tmp_path, npz_file):
    from coupled_mamba.train.optim import COUPLING_LR_SCALE, build_optimizer

    model = build_model("coupled-learned", [3, 2], d_model=8, d_state=4, n_layers=1)
    decayed, free = build_optimizer(model, 1e-3, 5e-4).param_groups
    assert decayed["lr"] == 1e-3 and free["lr"] == pytest.approx(1e-3 * COUPLING_LR_SCALE)
    assert build_optimizer(model, 1e-3, 5e-4, coupling_lr_scale=1.0).param_groups[1]["lr"] == 1e-3
    # one step on a constant gradient moves a logit by about its group's lr (Adam)
    opt = build_optimizer(model, 1e-3, 0.0, coupling_lr_scale=7.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    logits = model.backbone.layers[0].coupling_logits
    before = logits.detach().clone()
    opt.step()
    torch.testing.assert_close(before - logits.detach(), torch.full_like(before, 7e-3), rtol=1e-3, atol=1e-6)
    # the command records the option; a configuration without it means 1 (every weight alike)
    out = tmp_path / "run"
    assert train.main(["--data", str(npz_file), "--model", "coupled-learned", *FAST, "--coupling-lr-scale", "12",
                       "--out", str(out)]) == 0
    assert _json(out / "config.json")["coupling_lr_scale"] == 12.0
    with pytest.raises(SystemExit):
        train.main(["--data", str(npz_file), *FAST, "--coupling-lr-scale", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="coupling_lr_scale"):
        train.fit(load_npz(npz_file), "coupled-learned", epochs=1, coupling_lr_scale=-1.0, **TINY_OPTIONS)


def test_learned_coupling_is_reported(tmp_path, npz_file):
    out = tmp_path / "run"
    assert train.main(["--data", str(npz_file), "--model", "coupled-learned", *FAST, "--n-layers", "2",
                       "--out", str(out)]) == 0
    w = np.array(_json(out / "seed-0" / "results.json")["coupling_weights"])
    assert w.shape == (2, 2, 2) and np.allclose(w.sum(-1), 1.0, atol=2e-4)
    assert _json(out / "results.json")["per_seed"]["0"]["coupling_weights"] == w.tolist()
    r = train.fit(load_npz(npz_file), "coupled-learned", epochs=1, batch_size=16, device="cpu",
                  **{**TINY_OPTIONS, "n_layers": 2})
    assert r.coupling_weights == w.tolist()
    assert train.fit(load_npz(npz_file), "concat", epochs=1, batch_size=16, device="cpu",
                     **TINY_OPTIONS).coupling_weights is None


def test_sum_coupling_overflow_stops_the_run_with_advice(tmp_path, npz_file, capsys):
    """No monkeypatching: coupled-sum over 160 steps of 2 modalities overflows float32 from the start."""
    with pytest.warns(RuntimeWarning, match="float32 can overflow after about 128 steps"):
        code = train.main(["--data", str(npz_file), "--model", "coupled-sum", *FAST, "--seq-len", "160",
                           "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "not finite (nan) at epoch 1, batch 1 of 2" in err and "grows like 2^L over the L = 160 steps" in err
    # the bounded couplings train on the same data and length
    assert train.main(["--data", str(npz_file), "--model", "coupled-mean", *FAST, "--seq-len", "160",
                       "--out", str(tmp_path / "mean")]) == 0


def test_folds_with_several_seeds(tmp_path, npz_file, capsys):
    out = tmp_path / "cv"
    assert train.main(["--data", str(npz_file), "--folds", "2", "--seeds", "3", "4", *FAST, "--out", str(out)]) == 0
    res = _json(out / "results.json")
    assert res["folds"] == 2 and res["seeds"] == [3, 4]
    for k in ("0", "1"):
        fold = res["per_fold"][k]
        assert sorted(fold["per_seed"]) == ["3", "4"]
        accs = [fold["per_seed"][s]["test"]["Acc"] for s in ("3", "4")]
        assert fold["test"]["Acc"] == pytest.approx(np.mean(accs), abs=1e-4)
        for s in (3, 4):
            assert (out / f"fold-{k}" / f"seed-{s}" / "best.pt").is_file()
    assert "(2 folds)" in train.summarize_runs([str(out)])
    res["folds"] = 1
    (out / "results.json").write_text(json.dumps(res))
    with pytest.raises(train.UsageError, match="'folds'"):
        train.summarize_runs([str(out)])
