"""Metrics against hand-computed cases (ties at zero, half-way rounding, bin edges) and sklearn."""
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
