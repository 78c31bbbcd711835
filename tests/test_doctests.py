"""Every docstring example of the installed package runs (numpydoc Examples are doctests)."""

import doctest
import importlib
import pkgutil

import pytest

import causalcell

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(causalcell.__path__, prefix="causalcell.")
    if info.name != "causalcell.cli"  # its examples are the CLI tests
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
