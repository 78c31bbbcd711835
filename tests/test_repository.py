"""Project promises: the README's commands, CI, lint."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from causalcell.models.lcd import LCD

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.DOTALL)


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    commands = readme_commands()
    assert len(commands) == 2, "README must hold exactly two copy-paste commands"
    assert text.index(commands[0]) < text.index(commands[1]) < text.index("\n## ")
    install_and_demo, install_and_test = commands
    assert install_and_demo.startswith("python3 -m venv") and "causalcell demo" in install_and_demo
    assert "'.[test]'" in install_and_test and install_and_test.endswith("pytest")
    assert install_and_test in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is installed with the test extras"
)
def test_ruff_is_clean():
    for arguments in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *arguments, "."],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)\n```", text, flags=re.DOTALL)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["covariance"].shape == (50, 50)
    assert namespace["arrays"].counts.shape == (10_000, 50)
    # The numbers, not only the shapes: the arrays are the AnnData's counts, the control mean
    # is the simulated baseline, and the covariance solves the Lyapunov equation
    # A S + S A^T + diag(sigma^2) = 0 (float32 solve; entries of S are O(0.1-1), so 1e-5).
    adata, truth = namespace["adata"], namespace["truth"]
    np.testing.assert_array_equal(namespace["arrays"].counts, adata.X.toarray())
    np.testing.assert_allclose(namespace["mean"], adata.uns["simulation"]["baseline"], atol=1e-5)
    drift = np.asarray(truth.drift.matrix(), np.float64)
    covariance = np.asarray(namespace["covariance"], np.float64)
    residual = drift @ covariance + covariance @ drift.T + np.diag(np.asarray(truth.sigma) ** 2)
    np.testing.assert_allclose(residual, 0.0, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is installed with the test extras"
)
def test_docs_build_in_strict_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "register" in (tmp_path / "api" / "data" / "index.html").read_text()
    # Every public method of LCD is on its page, those of its base classes included.
    page = (tmp_path / "api" / "models" / "index.html").read_text()
    public = [name for name in dir(LCD) if not name.startswith("_")]
    missing = [name for name in public if f'id="causalcell.models.lcd.LCD.{name}"' not in page]
    assert not missing, f"LCD members missing from docs/api/models.md's page: {missing}"
