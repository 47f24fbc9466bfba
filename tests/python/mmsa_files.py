"""Small MMSA-style feature pickles for tests: the real key structure and feature shapes
(MOSEI aligned / unaligned, SIMS), a few samples per split, random values."""
from __future__ import annotations

import pickle

import numpy as np

# (text (L, d), audio (L, d), vision (L, d)) as in the released files
SHAPES = {
    "mosei_aligned": ((50, 768), (50, 74), (50, 35)),
    "mosei_unaligned": ((50, 768), (500, 74), (500, 35)),
    "mosi_unaligned": ((50, 768), (375, 5), (500, 20)),
    "sims_unaligned": ((39, 768), (400, 33), (55, 709)),
}


def make_mmsa(kind: str = "mosei_unaligned", sizes=(6, 3, 4), seed: int = 0, float64: bool = True,
              lengths_as_list: bool = True, neg_inf: bool = True, classification: bool = False) -> dict:
    """The dict an MMSA pickle holds."""
    rng = np.random.default_rng(seed)
    (Lt, dt), (La, da), (Lv, dv) = SHAPES[kind]
    sims = kind.startswith("sims")
    unaligned = "unaligned" in kind
    ftype = np.float64 if float64 else np.float32
    data = {}
    for split, n in zip(("train", "valid", "test"), sizes):
        text_len = rng.integers(3, Lt + 1, n)
        mask = (np.arange(Lt)[None, :] < text_len[:, None]).astype(np.float64)
        ids = rng.integers(100, 30000, (n, Lt)) * mask
        text_bert = np.stack([ids, mask, np.zeros_like(mask)], axis=1)  # stored as floats
        d = {
            "id": np.array([f"{split}_{i}$_$0" for i in range(n)], dtype=object),
            "raw_text": np.array(["some words"] * n, dtype=object),
            "text": (rng.standard_normal((n, Lt, dt)) * mask[:, :, None]).astype(ftype),
            "text_bert": text_bert,
            "audio": rng.standard_normal((n, La, da)).astype(ftype),
            "vision": rng.standard_normal((n, Lv, dv)).astype(ftype),
        }
        if neg_inf:
            d["audio"][0, 1, :3] = -np.inf
            d["audio"][-1, 0, 0] = -np.inf
        if unaligned:
            al = rng.integers(1, La + 1, n)
            vl = rng.integers(1, Lv + 1, n)
            d["audio_lengths"] = [int(v) for v in al] if lengths_as_list else al
            d["vision_lengths"] = [int(v) for v in vl] if lengths_as_list else vl
        if sims:
            y = np.round(rng.uniform(-1, 1, n) * 5) / 5
            y[0] = 0.0
            for m in "TAV":
                d[f"regression_labels_{m}"] = np.round(rng.uniform(-1, 1, n) * 5) / 5
        else:
            y = np.round(rng.uniform(-3, 3, n) * 3) / 3
            y[0] = 0.0
        d["regression_labels"] = y.astype(np.float64 if float64 else np.float32)
        if classification:
            d["classification_labels"] = np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.float64)
        data[split] = d
    return data


def write_mmsa(path, data: dict) -> str:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return str(path)
