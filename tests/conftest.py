"""Run the longest test files first.

pytest-xdist (``--dist loadfile``) hands whole files to its two workers in collection order,
each to the first worker that is free. Collection order is alphabetical, which put the
notebooks (two end-to-end runs in one file) and the demo last: one worker ran them while the
other sat idle. Longest first is the classic greedy rule for two machines (Graham 1969), so
the files that fit models lead, in the order of their measured cost on two CPU cores.
"""

#: Test files that fit models, longest first (the rest keep their order after them).
LONGEST_FIRST = (
    "test_notebooks.py",
    "test_gene_space.py",
    "test_neural.py",
    "test_lcd.py",
    "test_effects.py",
    "test_worlds.py",
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
