"""Heatmap of CLIPR direct effects (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_direct_effects"]

#: Face colour and hatch of effects the screen does not identify.
UNIDENTIFIED_COLOR = "0.85"
UNIDENTIFIED_HATCH = "///"


def plot_direct_effects(effects, ax=None):
    """Heatmap of ``effects.mean`` in drift orientation (row = target gene, column = source).

    A diverging colormap centred at 0 (red activates, blue represses); unidentified effects are
    grey and hatched, the diagonal (self-decay, not an edge) is left blank, and, with posterior
    draws, a black dot marks each effect whose credible interval excludes zero.

    Parameters
    ----------
    effects
        A :class:`DirectEffects`.
    ax
        Matplotlib axes to draw on; a new figure is created when ``None``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes; its first image holds the (masked) means and its collections the dots.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    size = len(effects.genes)
    if ax is None:
        inches = 0.4 * size + 2.0
        _, ax = plt.subplots(figsize=(inches + 1.0, inches))
    diagonal = np.eye(size, dtype=bool)
    shown = np.ma.masked_array(effects.mean, mask=~effects.identified | diagonal)
    largest = float(np.max(np.abs(shown))) if shown.count() else 1.0
    largest = largest if largest > 0 else 1.0
    colormap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    image = ax.imshow(shown, cmap=colormap, vmin=-largest, vmax=largest, interpolation="none")
    ax.figure.colorbar(image, ax=ax, label="direct effect W[target, source]")
    for row, column in zip(*np.nonzero(~effects.identified & ~diagonal)):
        ax.add_patch(
            Rectangle(
                (column - 0.5, row - 0.5),
                1.0,
                1.0,
                facecolor=UNIDENTIFIED_COLOR,
                hatch=UNIDENTIFIED_HATCH,
                edgecolor="0.5",
                linewidth=0.0,
                label="not identified",
            )
        )
    if effects.draws is not None:
        excludes_zero = effects.identified & ((effects.lower > 0) | (effects.upper < 0))
        rows, columns = np.nonzero(excludes_zero)
        ax.scatter(columns, rows, s=12, color="black", label="interval excludes 0")
    labels = [str(gene) for gene in effects.genes]
    ax.set_xticks(range(size), labels, rotation=90)
    ax.set_yticks(range(size), labels)
    ax.set_xlabel("source gene (column)")
    ax.set_ylabel("target gene (row)")
    return ax
