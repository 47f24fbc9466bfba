"""Train and evaluate Coupled Mamba and the baselines: ``coupled-mamba train`` / ``evaluate`` /
``summarize``, and the Python API :func:`fit` and :func:`cross_validate`.

``python -m coupled_mamba.train [options]`` is the same as ``coupled-mamba train [options]``.
With no options it trains the default model (coupled-mean) on the embedded synthetic task.

What a run writes (``--out``, default ``runs/<dataset>-<model>``)::

    config.json            the resolved configuration
    results.json           test (and valid) metrics of every seed, their mean and std
    seed-<s>/metrics.csv   one row per epoch: train loss, valid loss, valid metrics
    seed-<s>/results.json  best epoch, its valid metrics, test metrics of the best checkpoint
    seed-<s>/curve.png     learning curve
    seed-<s>/best.pt       best checkpoint (model weights, model config, data source, metrics)
    seed-<s>/last.pt       resume state (model, optimiser, position in the epoch, history)

With ``--folds K`` (an .npz file): ``fold-<k>/seed-<s>/`` for every fold, and results.json holds
each fold's metrics and their mean and std over the folds.

Model selection is on the validation split (``--select``, default MAE for regression, accuracy
for classification; ties go to the lower validation loss); the test metrics are those of the
selected checkpoint. A run killed at any point and resumed (``--resume``) ends with the same
weights and metrics as an uninterrupted one (see :mod:`.loop`).

Multi-process data-parallel training: launch with torchrun, e.g.
``torchrun --standalone --nproc_per_node 2 -m coupled_mamba.train ...`` (gloo on CPU, nccl on
GPU). Each global batch of ``--batch-size`` samples is split between the processes and the loss
is normalised by the global batch size, so the update equals the single-process one.

One job per module: :mod:`.config` (options and config.json), :mod:`.distributed` (device and
process group), :mod:`.artifacts` (files and their formats), :mod:`.stores` (where a seed's
checkpoints go), :mod:`.loop` (training one seed), :mod:`.runs` (the command), :mod:`.evaluation`
(evaluate and summarize), :mod:`.api` (:func:`fit`), :mod:`.crossval` (:func:`cross_validate`),
:mod:`.optim` (the optimiser), :mod:`.divergence` (the error for a non-finite loss), :mod:`.memory`
(glibc's malloc thresholds for a training process).
"""
from .api import FitResult, fit
from .crossval import CrossValidationResult, cross_validate
from .artifacts import CHECKPOINT_FORMAT, load_checkpoint
from .config import DATASET_DEFAULTS, PAPER_DEFAULTS, build_parser, resolve_config
from .errors import UsageError
from .evaluation import build_evaluate_parser, evaluate_checkpoint, evaluate_main, summarize_main, summarize_runs
from .loop import predict
from .memory import retain_freed_memory
from .runs import main

__all__ = [
    "main", "evaluate_main", "build_parser", "build_evaluate_parser", "resolve_config",
    "evaluate_checkpoint", "load_checkpoint", "predict", "DATASET_DEFAULTS", "PAPER_DEFAULTS",
    "summarize_main", "summarize_runs", "UsageError", "CHECKPOINT_FORMAT", "fit", "FitResult",
    "cross_validate", "CrossValidationResult", "retain_freed_memory",
]
