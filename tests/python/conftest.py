"""Fixtures shared by the Python tests (plain helpers live in scan_helpers.py)."""
import pytest

from coupled_mamba.ops import settings


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an element a kernel forgets to write fails."""
    monkeypatch.setattr(settings, "POISON_OUTPUTS", True)
