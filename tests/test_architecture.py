"""The architecture of docs/design.md holds: layers (import-linter contracts in pyproject.toml),
no function-level imports of causalcell, one hop from the root, modules of a readable size."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import causalcell as cc

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "causalcell"
#: "No module over about 400 lines" (the layout issue): 420 leaves room for a docstring to grow
#: without inviting a second responsibility into a module.
MAX_MODULE_LINES = 420
#: The root package keeps its public modules and packages, about a dozen files.
MAX_ROOT_FILES = 12


def test_import_linter_contracts_are_kept():
    # In a subprocess from the repository root (where pyproject.toml holds the contracts): the
    # linter builds the import graph of the installed package, and prints what broke.
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(linter), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "2 kept" in result.stdout


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_causalcell_inside_a_function():
    # import-linter sees imports inside function bodies as ordinary edges, but a lazy import is
    # how a cycle hides: every causalcell import sits at the top of its module.
    lazy = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.ImportFrom):
                    names = ["causalcell (relative)"]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if any(name.startswith("causalcell") for name in names):
                    lazy.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not lazy, f"function-level causalcell imports: {lazy}"


def test_modules_stay_small_and_the_root_stays_a_table_of_contents():
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
    root_files = [path.name for path in PACKAGE.iterdir() if path.is_file()]
    assert len(root_files) <= MAX_ROOT_FILES, sorted(root_files)


def test_every_capability_is_one_hop_from_the_root():
    for name in (
        "LCD",
        "fit",
        "fit_nuts",
        "Posterior",
        "register",
        "to_arrays",
        "do",
        "shift",
        "knockdown",
        "knockout",
        "noise_scale",
        "interventional",
        "counterfactual",
        "effect",
        "CausalResult",
    ):
        assert hasattr(cc, name), name
    for namespace in ("clipr", "data", "datasets", "diffusion", "evaluation", "graph"):
        assert hasattr(cc, namespace), namespace
    for namespace in ("handlers", "inference", "metrics", "models", "noise", "queries", "scm"):
        assert hasattr(cc, namespace), namespace
    assert callable(cc.counterfactual) and cc.counterfactual is cc.queries.counterfactual
    assert cc.models.lcd_model is cc.models.lcd.lcd_model  # the NumPyro program is public
    assert cc.clipr.direct_effects is not None and cc.LCD is cc.models.lcd.LCD
