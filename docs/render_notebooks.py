"""Render the notebooks into the docs site from an executed run.

Usage::

    python docs/render_notebooks.py [notebooks/sachs.ipynb ...]

Runs each notebook's code cells top to bottom in one namespace, as the test suite does
(``CI=1``, the Agg backend, a temporary working directory), and writes
``docs/notebooks/<name>.md``: the markdown cells as they are, each code cell as a Python block
followed by what it printed, the value of its last expression (tables as HTML) and its figures
(PNG files in ``docs/notebooks/<name>/``). ``tests/test_notebooks.py`` checks that every page
holds its notebook's current code, so a page cannot drift from its notebook: rerun this script
after editing a notebook. No Jupyter is needed.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PAGES = ROOT / "docs" / "notebooks"
#: First line of every rendered page; the test reads the code blocks after it.
HEADER = "<!-- rendered by docs/render_notebooks.py from notebooks/{name}; do not edit -->"


def cell_sources(notebook: dict, kind: str | None = None) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of the notebook's cells (of one kind when given)."""
    cells = []
    for cell in notebook["cells"]:
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        if kind is None or cell["cell_type"] == kind:
            cells.append((cell["cell_type"], source.strip("\n")))
    return cells


def _display(value) -> str:
    """Markdown of a cell's last value: a table as HTML, anything else as text."""
    html = getattr(value, "to_html", None)
    if callable(html):
        return '<div class="notebook-table">\n' + html(border=0) + "\n</div>"
    return "```text\n" + repr(value) + "\n```"


def _run_cell(source: str, namespace: dict, label: str):
    """Execute one cell; return what it printed and the value of its last expression."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    printed = io.StringIO()
    value = None
    with contextlib.redirect_stdout(printed):
        exec(compile(tree, label, "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), label, "eval"), namespace)
    return printed.getvalue(), value


def render(path: Path) -> Path:
    """Execute ``path`` and write its page; return the page's path."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notebook = json.loads(path.read_text(encoding="utf-8"))
    figures = PAGES / path.stem
    shutil.rmtree(figures, ignore_errors=True)
    figures.mkdir(parents=True)
    parts = [HEADER.format(name=path.name)]
    namespace = {"__name__": "__main__"}
    count = 0
    previous = os.getcwd(), os.environ.get("CI")
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        os.environ["CI"] = "1"
        try:
            for index, (kind, source) in enumerate(cell_sources(notebook)):
                if kind != "code":
                    parts.append(source)
                    continue
                parts.append("```python\n" + source + "\n```")
                printed, value = _run_cell(source, namespace, f"{path.name} (cell {index})")
                if printed.strip():
                    parts.append("```text\n" + printed.rstrip("\n") + "\n```")
                if value is not None:
                    parts.append(_display(value))
                for number in plt.get_fignums():
                    count += 1
                    name = f"figure{count}.png"
                    plt.figure(number).savefig(figures / name, dpi=80, bbox_inches="tight")
                    parts.append(f"![figure {count}]({path.stem}/{name})")
                plt.close("all")
        finally:
            os.chdir(previous[0])
            if previous[1] is None:
                os.environ.pop("CI", None)
            else:
                os.environ["CI"] = previous[1]
    page = PAGES / f"{path.stem}.md"
    page.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return page


def main(arguments: list[str]) -> None:
    paths = [Path(argument) for argument in arguments] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        print(f"wrote {render(path.resolve()).relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
