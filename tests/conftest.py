"""Suite-wide settings: cheaper XLA compilation, and the longest test files first.

Compilation, not arithmetic, is most of the suite's time: each LCD fit compiles two programs
of about two thousand fused kernels, and eager code compiles each operation on first use.
XLA's CPU backend spends most of that in LLVM's optimisation of the kernels, which pays off
for long fits, not for the few hundred steps of a test: ``--xla_backend_optimization_level=0``
and the older kernel emitters (``--xla_cpu_use_fusion_emitters=false``) cut the compilation
time of a small LCD fit by about half on two CPU cores. They change how kernels are
generated, not what they compute. XLA aborts on a flag it does not know, so they are set only
for the jaxlib versions where they were measured, and only where the caller did not set
``XLA_FLAGS`` (subprocess tests set their own).

pytest-xdist hands whole files to its two workers in collection order, each to the first
worker that is free. Collection order is alphabetical, which put the notebooks (two
end-to-end runs in one file) and the demo last: one worker ran them while the other sat idle.
Longest first is the classic greedy rule for two machines (Graham 1969), so the files that
fit models lead, in the order of their measured cost on two CPU cores.
"""

import os
from importlib.metadata import version

#: Compilation settings for tests (see the module docstring), by jaxlib ``major.minor``.
TEST_XLA_FLAGS = {
    "0.10": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
}

if "XLA_FLAGS" not in os.environ:  # read when JAX starts its backend, after this
    _flags = TEST_XLA_FLAGS.get(".".join(version("jaxlib").split(".")[:2]))
    if _flags:
        os.environ["XLA_FLAGS"] = _flags

#: Test files that fit models, longest first (the rest keep their order after them).
LONGEST_FIRST = (
    "test_notebooks.py",
    "test_gene_space.py",
    "test_neural.py",
    "test_lcd.py",
    "test_effects.py",
    "test_worlds.py",
    "test_concept_model.py",
    "test_accuracy.py",
    "test_kds.py",
    "test_cli.py",
    "test_svi.py",
    "test_linalg.py",
    "test_devices.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
