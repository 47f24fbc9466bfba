"""Metrics against hand-computed cases (ties at zero, half-way rounding, bin edges), sklearn and,
for the "mmsa" mode, MMSA's MetricsTop itself (when MMSA is installed: pip install --no-deps mmsa)."""
import importlib.util
import math
import os
import warnings

import numpy as np
import pytest
import torch

from coupled_mamba import metrics as M


# ----------------------------------------------------------------------------- MOSI / MOSEI

# Hand-computed below. Labels with ties at zero and halves (1.5, -2.5, 0.5, -0.5) that round to
# even; predictions at exactly 0 and at halves (2.5, -1.5).
MOSI_Y = [0.0, 0.0, 1.5, -2.5, 0.5, -0.5, 3.4, -1.0]
MOSI_P = [0.0, -0.1, 2.5, -2.4, 0.4, 0.6, 2.6, -1.5]


def test_mosi_hand_computed():
    m = M.mosi_metrics(np.array(MOSI_P), np.array(MOSI_Y))
    # Has0: y >= 0 = TTTFTFTF, p >= 0 = TFTFTTTF -> 6/8. F1: True 8/10 (support 5),
    # False 4/6 (support 3) -> (4 + 2) / 8.
    assert m["Has0_acc_2"] == 0.75
    assert m["Has0_F1_score"] == 0.75
    # Non0: drop the two zeros; y > 0 = TFTFTF, p > 0 = TFTTTF -> 5/6.
    # F1: True 6/7, False 4/5, support 3 each -> 0.828571...
    assert m["Non0_acc_2"] == 0.8333
    assert m["Non0_F1_score"] == 0.8286
    # Acc-7: y -> 0 0 2 -2 0 -0 3 -1, p -> 0 -0 2 -2 0 1 3 -2 (half to even): 6/8.
    # (Rounding half away from zero would give 3/8.)
    assert m["Mult_acc_7"] == 0.75
    # Acc-5: clip to [-2, 2]: y -> 0 0 2 -2 0 -0 2 -1, p -> 0 -0 2 -2 0 1 2 -2: 6/8.
    assert m["Mult_acc_5"] == 0.75
    # Acc-3: clip to [-1, 1]: only the 6th sample differs.
    assert m["Mult_acc_3"] == 0.875
    # MAE on unclipped values: (0 + .1 + 1 + .1 + .1 + 1.1 + .8 + .5) / 8.
    assert m["MAE"] == 0.4625
    assert m["Corr"] == round(float(np.corrcoef(MOSI_P, MOSI_Y)[0, 1]), 4)
    assert set(m) == {
        "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
        "Mult_acc_3", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
    }


def test_mosi_accepts_tensors_and_shapes():
    p = torch.tensor(MOSI_P, dtype=torch.float32).reshape(-1, 1)
    y = torch.tensor(MOSI_Y, dtype=torch.float32)
    assert M.mosi_metrics(p, y) == M.mosi_metrics(np.array(MOSI_P), np.array(MOSI_Y))
    with pytest.raises(ValueError):
        M.mosi_metrics([0.1, 0.2], [0.1])


def test_mosi_all_zero_labels_and_constant_predictions():
    m = M.mosi_metrics(np.zeros(4), np.zeros(4))
    assert m["Has0_acc_2"] == 1.0 and m["MAE"] == 0.0
    assert m["Non0_acc_2"] == 0.0 and m["Non0_F1_score"] == 0.0  # no non-zero samples
    assert m["Corr"] == 0.0  # undefined correlation reported as 0


def test_mosi_random_against_sklearn_and_scipy():
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y = np.round(rng.uniform(-3, 3, 500) * 3) / 3  # many ties, some exact zeros
    y[:20] = 0.0
    p = rng.normal(y * 0.6, 1.0)
    p[20:30] = 0.0
    m = M.mosi_metrics(p, y)
    nz = y != 0
    assert m["Has0_acc_2"] == round(sk.accuracy_score(y >= 0, p >= 0), 4)
    assert m["Has0_F1_score"] == round(sk.f1_score(y >= 0, p >= 0, average="weighted"), 4)
    assert m["Non0_acc_2"] == round(sk.accuracy_score(y[nz] > 0, p[nz] > 0), 4)
    assert m["Non0_F1_score"] == round(sk.f1_score(y[nz] > 0, p[nz] > 0, average="weighted"), 4)
    for k, b in (("Mult_acc_7", 3), ("Mult_acc_5", 2), ("Mult_acc_3", 1)):
        ref = np.mean(np.round(np.clip(p, -b, b)) == np.round(np.clip(y, -b, b)))
        assert m[k] == round(float(ref), 4)
    assert m["MAE"] == round(float(np.mean(np.abs(p - y))), 4)
    assert m["Corr"] == round(float(stats.pearsonr(p, y)[0]), 4)


# ----------------------------------------------------------------------------- SIMS


def test_sims_hand_computed_float32_edges():
    y = np.array([-1.0, -0.8, -0.1, 0.0, 0.1, 0.2, 0.7, 1.0], dtype=np.float32)
    p = np.array([-1.3, -0.6, -0.09, 0.05, 0.1, 0.7, 0.68, 2.0], dtype=np.float32)
    m = M.sims_metrics(p, y)
    # 2 classes (zero is negative): y 0 0 0 0 1 1 1 1, p 0 0 0 1 1 1 1 1.
    assert m["Mult_acc_2"] == 0.875
    # F1: class 0 6/7, class 1 8/9, support 4 each.
    assert m["F1_score"] == 0.873
    # 3 classes, bins (lo, hi]: y -0.1 -> negative, 0.1 -> neutral (float32 0.1 is the edge),
    # y 0 0 0 1 1 2 2 2, p 0 0 1 1 1 2 2 2.
    assert m["Mult_acc_3"] == 0.875
    # 5 classes: y 0 0 1 2 2 3 3 4 (0.7 is in (0.1, 0.7]), p 0 1 2 2 2 3 3 4.
    assert m["Mult_acc_5"] == 0.75
    # MAE on clipped values: (0 + .2 + .01 + .05 + 0 + .5 + .02 + 0) / 8.
    assert m["MAE"] == 0.0975
    pc = np.clip(p.astype(np.float64), -1, 1)
    assert m["Corr"] == round(float(np.corrcoef(pc, y.astype(np.float64))[0, 1]), 4)
    assert set(m) == {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}


def test_sims_edges_follow_value_dtype():
    # float64 labels at the edges: 0.1 and -0.1 and 0.7 fall in the lower bin, like float32 ones.
    for dt in (np.float32, np.float64):
        y = np.array([-0.7, -0.1, 0.0, 0.1, 0.7], dtype=dt)
        assert M._bin(y, M.SIMS_EDGES_5).tolist() == [0, 1, 2, 2, 3]
        assert M._bin(y, M.SIMS_EDGES_3).tolist() == [0, 0, 1, 1, 2]
        assert M._bin(y, M.SIMS_EDGES_2).tolist() == [0, 0, 0, 1, 1]


def test_sims_random_against_mmsa_style_loop():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = (np.round(rng.uniform(-1, 1, 400) * 10) / 10).astype(np.float32)  # hits every edge
    p = rng.normal(y, 0.4).astype(np.float32)
    m = M.sims_metrics(p, y)
    pc, yc = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)

    def loop_bins(v, edges):  # the community's loop, comparing a float32 array to Python floats
        out = v.copy()
        for i in range(len(edges) - 1):
            out[np.logical_and(v > edges[i], v <= edges[i + 1])] = i
        return out

    for k, e in (("Mult_acc_2", M.SIMS_EDGES_2), ("Mult_acc_3", M.SIMS_EDGES_3),
                 ("Mult_acc_5", M.SIMS_EDGES_5)):
        ref = np.mean(loop_bins(pc, e) == loop_bins(yc, e))
        assert m[k] == round(float(ref), 4), k
    f1 = sk.f1_score(loop_bins(yc, M.SIMS_EDGES_2), loop_bins(pc, M.SIMS_EDGES_2), average="weighted")
    assert m["F1_score"] == round(float(f1), 4)
    assert m["MAE"] == round(float(np.mean(np.abs(pc.astype(np.float64) - yc))), 4)


# ----------------------------------------------------------------------------- classification


def test_classification_hand_computed():
    y = [0, 1, 2, 2, 1, 0]
    p = [0, 2, 2, 2, 1, 1]
    logits = np.eye(3)[p] * 2.0 - 1.0
    for pred in (p, logits, torch.tensor(logits)):
        m = M.classification_metrics(pred, y)
        # F1 per class: 2/3, 1/2, 4/5, support 2 each.
        assert m == {"Acc": 0.6667, "F1_score": 0.6556}


def test_weighted_f1_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for trial in range(30):
        k = int(rng.integers(2, 6))
        n = int(rng.integers(1, 40))
        y = rng.integers(0, k, n)
        p = rng.integers(0, k + 1, n)  # a label that only occurs in the predictions
        ref = sk.f1_score(y, p, average="weighted", zero_division=0)
        assert abs(M.weighted_f1(y, p) - ref) < 1e-12, (trial, y, p)
        assert M.accuracy(y, p) == sk.accuracy_score(y, p)
    assert M.weighted_f1([], []) == 0.0


def test_sentiment3():
    y = np.array([0, 1, 2, 2, 1, 0])
    logits = np.array([
        [2.0, 0.0, 1.0],   # 0, non-neutral pick 0
        [0.0, 2.0, 1.0],   # 1
        [1.0, 3.0, 0.0],   # 1 (neutral argmax), non-neutral pick 0 -> wrong
        [0.0, 0.0, 1.0],   # 2
        [0.0, 1.0, 2.0],   # 2
        [0.5, 1.0, 0.0],   # 1, non-neutral pick 0 -> right
    ])
    m = M.sentiment3_metrics(logits, y)
    # 3-class: predictions 0 1 1 2 2 1 -> 3/6 correct.
    assert m["Mult_acc_3"] == 0.5
    # F1: class 0 tp1 fn1 -> 2/3; class 1 tp1 fp2 fn1 -> 2/5; class 2 tp1 fp1 fn1 -> 1/2.
    assert m["F1_score_3"] == round((2 / 3 + 2 / 5 + 1 / 2) / 3, 4)
    # Non-neutral samples 0, 2, 3, 5: picks 0 0 2 0 vs labels 0 2 2 0 -> 3/4.
    assert m["Non0_acc_2"] == 0.75
    # F1 over {0, 2}: class 0 tp2 fp1 -> 4/5; class 2 tp1 fn1 -> 2/3; support 2 each.
    assert m["Non0_F1_score"] == round((4 / 5 + 2 / 3) / 2, 4)


def test_compute_metrics_dispatch():
    assert M.compute_metrics("mosi", MOSI_P, MOSI_Y) == M.mosi_metrics(MOSI_P, MOSI_Y)
    with pytest.raises(ValueError, match="unknown metric family"):
        M.compute_metrics("bleu", [1], [1])
    assert M.lower_is_better("MAE") and M.lower_is_better("Loss")
    assert not M.lower_is_better("Non0_acc_2")


def test_regression_hand_computed_and_constant_inputs():
    p, y = np.array([1.0, 2.0, 4.0, 3.0]), np.array([1.5, 2.0, 3.0, 5.0])
    m = M.compute_metrics("regression", p, y)
    assert list(m) == ["MAE", "RMSE", "Corr"] == M.metric_names("regression", 1)
    assert m["MAE"] == round((0.5 + 0 + 1 + 2) / 4, 4)
    assert m["RMSE"] == round(float(np.sqrt((0.25 + 0 + 1 + 4) / 4)), 4)
    assert m["Corr"] == round(float(np.corrcoef(p, y)[0, 1]), 4)
    # targets on any scale (no clipping), tensors accepted, a constant input scores Corr 0
    big = M.regression_metrics(torch.tensor([100.0, 300.0]), torch.tensor([0.0, 0.0]))
    assert big == {"MAE": 200.0, "RMSE": round(float(np.sqrt((100 ** 2 + 300 ** 2) / 2)), 4), "Corr": 0.0}
    assert M.lower_is_better("RMSE") and not M.lower_is_better("Corr")
    with pytest.raises(ValueError, match="no family"):
        M.compute_metrics("regression", p, y, mode="mmsa")


# ----------------------------------------------------------------------------- mmsa mode


def test_mmsa_mosi_keys_and_shared_values():
    m = M.compute_metrics("mosi", np.array(MOSI_P), np.array(MOSI_Y), mode="mmsa")
    d = M.mosi_metrics(np.array(MOSI_P), np.array(MOSI_Y))
    assert list(m) == ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                       "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]  # no Mult_acc_3
    assert all(m[k] == d[k] for k in m)  # no ties at the fifth decimal here


def test_mmsa_regression_undefined_values():
    for fam in ("mosi", "sims"):
        const = M.compute_metrics(fam, np.full(5, 0.3), [0.1, -0.2, 0.5, 0.9, -0.6], mode="mmsa")
        single = M.compute_metrics(fam, [0.4], [0.2], mode="mmsa")
        assert math.isnan(const["Corr"]) and math.isnan(single["Corr"])
        assert M.compute_metrics(fam, np.full(5, 0.3), [0.1, -0.2, 0.5, 0.9, -0.6])["Corr"] == 0.0
    with pytest.raises(ValueError, match="every label is 0"):
        M.compute_metrics("mosi", [0.5, -1.0], [0.0, 0.0], mode="mmsa")
    with pytest.raises(ValueError, match="NaN"):
        M.compute_metrics("sims", [np.nan, 0.5], [0.1, 0.2], mode="mmsa")
    m = M.compute_metrics("mosi", [np.nan, 0.5, 1.0], [0.5, -1.0, 2.0], mode="mmsa")
    assert math.isnan(m["MAE"]) and m["Has0_acc_2"] == 0.3333  # MOSI keeps going with NaN


def test_mmsa_rounding_and_float32_mae():
    # Has0_acc_2 = 1/160 = 0.00625: numpy's rounding gives 0.0062, Python's 0.0063.
    p, y = np.full(160, -1.0), np.full(160, 1.0)
    p[0] = 1.0
    assert M.compute_metrics("mosi", p, y, mode="mmsa")["Has0_acc_2"] == 0.0062
    assert M.mosi_metrics(p, y)["Has0_acc_2"] == 0.0063
    # |p - y| = 2.49995 in float64, just below it in float32.
    p, y = np.array([-1.29995], np.float32), np.array([1.2], np.float32)
    assert M.compute_metrics("mosi", p, y, mode="mmsa")["MAE"] == 2.4999
    assert M.mosi_metrics(p, y)["MAE"] == 2.5


def test_mmsa_sentiment3_quirks():
    y = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y] * 2.0
    m = M.compute_metrics("sentiment3", perfect, y, mode="mmsa")
    # Non0: predictions 0/1 against labels 0/2 -> only the negative sample is right; F1 of
    # class 0 is 1 (support 1), of class 2 is 0 (support 2).
    assert m == {"Has0_acc_2": 1.0, "Has0_F1_score": 1.0, "Non0_acc_2": 0.3333,
                 "Non0_F1_score": 0.3333, "Acc_3": 1.0, "F1_score_3": 1.0}
    assert M.sentiment3_metrics(perfect, y)["Non0_acc_2"] == 1.0
    pos = M.compute_metrics("sentiment3", perfect, [2, 2, 2, 2], mode="mmsa")
    assert pos["Non0_acc_2"] == 0.0 and pos["Non0_F1_score"] == 0.0
    # Has0 puts neutral with negative; a tie between the negative and positive logit is negative.
    tie = M.compute_metrics("sentiment3", [[1.0, 0, 1.0], [0, 0, 1]], torch.tensor([1, 2]), mode="mmsa")
    assert tie["Has0_acc_2"] == 1.0
    for bad_p, bad_y, msg in (
        (perfect, [1, 1, 1, 1], "every label is neutral"),
        (y, y, "logits"),
        (perfect[:, :2], y, "logits"),
        (perfect, [0, 1, 2, 3], "labels 0, 1 or 2"),
        (perfect, [0, 1, 2], "differ in size"),
    ):
        with pytest.raises(ValueError, match=msg):
            M.compute_metrics("sentiment3", bad_p, bad_y, mode="mmsa")
    with pytest.raises(ValueError, match="no family 'classification'"):
        M.compute_metrics("classification", perfect, y, mode="mmsa")
    with pytest.raises(ValueError, match="unknown metrics mode"):
        M.compute_metrics("mosi", [1.0], [1.0], mode="paper")


def test_metric_names_match_computed_keys():
    reg_p, reg_y = np.array([0.5, -0.5, 0.1]), np.array([0.4, -0.2, 0.0])
    for mode in M.METRIC_MODES:
        for fam in M.METRIC_FAMILIES:
            k = {"classification": 4, "sentiment3": 3}.get(fam, 1)
            if mode == "mmsa" and fam in ("classification", "regression"):
                with pytest.raises(ValueError, match="no family"):
                    M.metric_names(fam, k, mode)
                continue
            if fam in ("mosi", "sims", "regression"):
                p, y = reg_p, reg_y
            else:
                p, y = np.eye(k)[[0, 1, 2]], np.array([0, 1, 2])
            assert M.metric_names(fam, k, mode) == list(M.compute_metrics(fam, p, y, mode=mode)), (mode, fam)
    assert M.metric_names("mosi", 1) == list(M.mosi_metrics(reg_p, reg_y))
    for args, msg in ((("sentiment3", 2), "num_classes 3"), (("classification", 1), ">= 2"),
                      (("mosi", 1, "x"), "unknown metrics mode"), (("bleu", 1), "unknown metric family"),
                      (("mosi", None), "must be an int")):
        with pytest.raises(ValueError, match=msg):
            M.metric_names(*args)


@pytest.fixture(scope="module")
def mmsa_top():
    """MMSA's MetricsTop, loaded from the installed file (importing the MMSA package would pull in
    its whole training stack, which a --no-deps install lacks)."""
    sk = pytest.importorskip("sklearn.metrics")
    spec = importlib.util.find_spec("MMSA")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("MMSA is not installed (pip install --no-deps mmsa==2.2.1)")
    path = os.path.join(spec.submodule_search_locations[0], "utils", "metricsTop.py")
    loader = importlib.util.spec_from_file_location("mmsa_metrics_top", path)
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    # scikit-learn < 1.6, which MMSA was written against, returns numpy floats, so MMSA rounds
    # every value the numpy way; later versions return Python floats. Pin the older type.
    mod.accuracy_score = lambda *a, **kw: np.float64(sk.accuracy_score(*a, **kw))
    mod.f1_score = lambda *a, **kw: np.float64(sk.f1_score(*a, **kw))
    return mod.MetricsTop


def _mmsa_cases(rng):
    """(family, predictions, labels): random, label grids with exact zeros, half-way and bin-edge
    predictions, constants, sizes 1 and 2, logits incl. perfect and tied ones, one-class labels."""
    f32 = np.float32
    halves = np.array([-3.5, -2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 3.0, 3.5], f32)
    edges = np.array([-1.2, -1.0, -0.7, -0.1, -0.0, 0.0, 0.1, 0.7, 1.0, 1.3], f32)
    for n in (1, 2, 3, 7, 32, 160, 457):
        for rep in range(3):
            for kind in range(8):
                y = (np.round(rng.uniform(-3.4, 3.4, n) * 3) / 3).astype(f32)
                y[rng.random(n) < 0.2] = 0.0
                p = rng.normal(y, 1.0).astype(f32)
                if kind == 1:
                    p = rng.choice(halves, n)
                elif kind == 2:
                    p = np.full(n, f32(rng.uniform(-3, 3)))
                elif kind == 3:
                    y = np.full(n, f32(1.5))
                elif kind == 4:
                    p, y = p.astype(np.float64), y.astype(np.float64)
                elif kind == 5:
                    y = np.zeros(n, f32)
                elif kind == 6:
                    y = rng.choice(halves, n)
                elif kind == 7:  # MAE near a tie at the fifth decimal: float32 vs float64 sums
                    p = (rng.integers(-70, 71, n) / 20 + 5e-5).astype(f32)
                    y = (rng.integers(-60, 61, n) / 20).astype(f32)
                yield "mosi", p, y
            for kind in range(7):
                y = (np.round(rng.uniform(-1, 1, n) * 10) / 10).astype(f32)
                p = rng.normal(y, 0.4).astype(f32)
                if kind == 1:
                    p = rng.choice(edges, n)
                elif kind == 2:
                    p = np.full(n, f32(0.1))
                elif kind == 3:
                    p = (np.round(p * 20) / 20).astype(f32)
                elif kind == 4:
                    p, y = p.astype(np.float64), y.astype(np.float64)
                elif kind == 5:
                    p[0] = np.nan
                elif kind == 6:
                    p = (rng.integers(-22, 23, n) / 20 + 5e-5).astype(f32)
                yield "sims", p, y
            for kind in range(7):
                y = rng.integers(0, 3, n)
                if kind in (1, 2, 3):
                    y = np.full(n, kind - 1)  # all negative, all neutral, all positive
                logits = rng.normal(0, 1, (n, 3)).astype(f32)
                if kind == 4:
                    logits = np.eye(3, dtype=f32)[y] * 3
                elif kind == 5:
                    logits = np.round(logits).astype(f32)  # many ties
                elif kind == 6:
                    logits = np.eye(3, dtype=f32)[rng.integers(0, 3, n)]
                yield "sentiment3", logits, y


def _run(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - MMSA raises several kinds; ours must raise ValueError
        return e


def test_mmsa_mode_matches_mmsa_metrics_top(mmsa_top):
    dataset = {"mosi": "MOSI", "sims": "SIMS", "sentiment3": "MOSI"}
    tops = {"mosi": mmsa_top("regression"), "sims": mmsa_top("regression"),
            "sentiment3": mmsa_top("classification")}
    counts = {"cases": 0, "raised": 0, "nan": 0}
    for fam, p, y in _mmsa_cases(np.random.default_rng(13)):
        counts["cases"] += 1
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MMSA's nan Corr and sklearn's undefined F1 warn
            ref = _run(tops[fam].getMetics(dataset[fam]), torch.from_numpy(p), torch.from_numpy(y))
        got = _run(M.compute_metrics, fam, p, y, "mmsa")
        where = (fam, p.dtype, p.shape, p[:4], y[:4])
        if isinstance(ref, Exception):
            assert isinstance(got, ValueError), (where, ref, got)
            counts["raised"] += 1
            continue
        assert not isinstance(got, Exception), (where, got)
        assert list(got) == list(ref), where
        for k in ref:
            r = float(ref[k])
            assert got[k] == r or (math.isnan(r) and math.isnan(got[k])), (where, k, r, got[k])
        counts["nan"] += any(math.isnan(v) for v in got.values())
    assert counts["cases"] >= 400 and counts["raised"] >= 20 and counts["nan"] >= 20, counts
