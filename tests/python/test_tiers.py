"""The package's three tiers import only downwards: ops <- modules <- application (train, data,
metrics, bench, cli). Checked statically on every module's import statements, so an import hidden
inside a function counts too."""
import ast
import pathlib

import coupled_mamba

PACKAGE = pathlib.Path(coupled_mamba.__file__).parent
TIER = {"_C": 0, "ops": 0, "modules": 1}  # everything else in the package is the application (2)


def _tier(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "coupled_mamba" or len(parts) == 1:
        return -1  # third-party, or the package root (which only re-exports the op)
    return TIER.get(parts[1], 2)


def _imports(path: pathlib.Path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts if rel.name != "__init__" else rel.parts[:-1])
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x: each name may be a submodule
                    yield from (f"{target}.{alias.name}" for alias in node.names)
                    continue
                yield target
            else:
                yield node.module


def test_no_import_runs_back_up_a_tier():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        own = _tier(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if own < 0:
            continue
        for module in _imports(path):
            if _tier(module) > own:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_op_tier_needs_only_torch_and_numpy():
    allowed = {"torch", "numpy", "__future__", "typing", "dataclasses", "warnings", "importlib", "os", "math"}
    wrong = []
    for path in (PACKAGE / "ops").rglob("*.py"):
        for module in _imports(path):
            top = module.split(".")[0]
            if top != "coupled_mamba" and top not in allowed:
                wrong.append(f"ops/{path.name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_old_import_paths_still_work_with_a_deprecation_warning():
    import importlib
    import sys

    import pytest

    for name, attr in (("coupled_mamba.scan", "coupled_selective_scan"),
                       ("coupled_mamba.reference", "coupled_selective_scan_ref")):
        sys.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match="moved to coupled_mamba.ops"):
            module = importlib.import_module(name)
        assert callable(getattr(module, attr))
