"""Reading a pickle without running the code it may name.

A pickle is a small program: opening one calls whatever functions it names, so a crafted file can
do anything the user can. :func:`load_data_pickle` lets a pickle rebuild only plain data: dicts,
lists, tuples, sets, strings, bytes, numbers, and numpy arrays, dtypes and scalars (through the few
numpy functions that rebuild them). Any other global the file names is refused before it is looked
up, so nothing it would call runs.
"""
from __future__ import annotations

import codecs
import importlib
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["RefusedPickle", "load_data_pickle", "ALLOWED_GLOBALS"]


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names a global that plain data never needs."""


def _numpy_function(module_suffix: str, name: str) -> Callable:
    # numpy 2 keeps its internals in numpy._core, numpy 1 in numpy.core; files name either
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module_suffix}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module_suffix}.{name}")


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for suffix, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")):
        fn = _numpy_function(suffix, name)
        for prefix in ("numpy._core", "numpy.core"):
            allowed[(f"{prefix}.{suffix}", name)] = fn
    # protocol 2 pickles store bytes as _codecs.encode(text, "latin1")
    allowed[("_codecs", "encode")] = codecs.encode
    for module in ("builtins", "__builtin__"):
        for t in (complex, bytearray, set, frozenset):
            allowed[(module, t.__name__)] = t
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


def load_data_pickle(file) -> Any:
    """Unpickle an open binary file holding only plain data; :class:`RefusedPickle` otherwise,
    carrying the refused global as ``module.name``."""
    return _DataUnpickler(file).load()
