"""Where the training loop keeps one seed's checkpoints and results: a run folder (the command) or
memory (the Python API). The loop calls the same methods on either."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from .artifacts import load_checkpoint, load_json, load_resume_state, plot_curve, save_csv, save_json, save_torch
from .errors import UsageError

__all__ = ["SeedFolder", "InMemoryStore"]


class SeedFolder:
    """seed-<s>/: best.pt, last.pt (resume state), metrics.csv, results.json and curve.png.

    Only the main process writes; every process reads the resume state.
    """

    checkpoint_name: Optional[str] = "best.pt"

    def __init__(self, seed_dir: str, is_main: bool):
        self.dir = seed_dir
        self.is_main = is_main
        self.last_path = os.path.join(seed_dir, "last.pt")
        self.best_path = os.path.join(seed_dir, "best.pt")
        self.results_path = os.path.join(seed_dir, "results.json")

    def load_resume(self) -> Optional[Dict[str, Any]]:
        return load_resume_state(self.last_path) if os.path.exists(self.last_path) else None

    def save_resume(self, resume_state: Dict[str, Any]) -> None:
        if self.is_main:
            save_torch(resume_state, self.last_path)

    def finished_result(self) -> Optional[Dict[str, Any]]:
        """The results.json of a seed that ran to the end (None if there is none)."""
        if not os.path.exists(self.results_path):
            return None
        what = "a seed's results (results.json written by coupled-mamba train)"
        res = load_json(self.results_path, what)
        if (not isinstance(res, dict) or not all(isinstance(res.get(k), dict) for k in ("valid", "test"))
                or not isinstance(res.get("best_epoch"), int) or not isinstance(res.get("seed"), int)):
            raise UsageError(f"{self.results_path}: not {what}; delete it to evaluate the seed again")
        return res

    def save_best(self, checkpoint: Dict[str, Any]) -> None:
        if self.is_main:
            save_torch(checkpoint, self.best_path)

    def load_best(self) -> Dict[str, Any]:
        return load_checkpoint(self.best_path)

    def save_history(self, rows: List[Dict[str, Any]]) -> None:
        if self.is_main:
            save_csv(rows, os.path.join(self.dir, "metrics.csv"))

    def save_result(self, result: Dict[str, Any], checkpoint: Dict[str, Any]) -> None:
        if self.is_main:
            save_torch(checkpoint, self.best_path)
            save_json(result, self.results_path)

    def plot(self, history: List[Dict[str, Any]], select: str, best_epoch: int, title: str) -> None:
        plot_curve(history, select, best_epoch, os.path.join(self.dir, "curve.png"), title)


class InMemoryStore:
    """Keeps the best weights in memory; no resume state, no files."""

    checkpoint_name: Optional[str] = None
    last_path = None

    def __init__(self):
        self.best: Optional[Dict[str, Any]] = None

    def load_resume(self) -> Optional[Dict[str, Any]]:
        return None

    def save_resume(self, resume_state: Dict[str, Any]) -> None:
        pass

    def finished_result(self) -> Optional[Dict[str, Any]]:
        return None

    def save_best(self, checkpoint: Dict[str, Any]) -> None:
        # the optimiser updates the weights in place: keep copies
        self.best = {**checkpoint, "model": {k: v.clone() for k, v in checkpoint["model"].items()}}

    def load_best(self) -> Dict[str, Any]:
        assert self.best is not None, "no epoch has finished"
        return self.best

    def save_history(self, rows: List[Dict[str, Any]]) -> None:
        pass

    def save_result(self, result: Dict[str, Any], checkpoint: Dict[str, Any]) -> None:
        self.best = checkpoint

    def plot(self, history: List[Dict[str, Any]], select: str, best_epoch: int, title: str) -> None:
        pass
