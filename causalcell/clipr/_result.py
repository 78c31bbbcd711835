"""The result of CLIPR: direct effects between genes, as a point estimate or posterior draws."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

from causalcell.clipr._plot import plot_direct_effects
from causalcell.graph import graph_from_drift, swap_orientation
from causalcell.results import CausalResult

__all__ = ["DirectEffects"]

_SCORES = ("magnitude", "sign_probability")


def _frozen(values, dtype=np.float64) -> np.ndarray:
    array = np.array(values, dtype=dtype, copy=True)
    array.flags.writeable = False
    return array


class DirectEffects:
    """Direct effects between genes estimated by CLIPR.

    Every matrix is in **drift orientation**: entry ``[i, j]`` is the direct effect of gene
    ``j`` (source, column) on gene ``i`` (target, row), ``W_ij = A_ij / (-A_ii)``, the
    regulation of ``i`` by ``j`` relative to ``i``'s self-decay. The diagonal is 0 (self-decay is
    not an edge). Entries that the screen does not identify are NaN in every estimate and
    ``False`` in :attr:`identified`; :meth:`table`, :meth:`to_networkx`,
    :meth:`adjacency_scores` and :meth:`plot` all carry that flag.

    Parameters
    ----------
    genes
        Names of the ``d`` genes, in matrix order.
    targets
        Perturbed gene of each response column, in column order.
    identified
        Boolean ``[d, d]``.
    mean
        Point estimate ``[d, d]``; give exactly one of ``mean`` and ``draws``.
    draws
        Posterior draws ``[S, d, d]``; the summaries are computed from them.
    probability
        Mass of the equal-tailed credible intervals (with ``draws``).
    condition_number
        Condition number of the solved system: a float, or ``[S]`` with draws.
    regularization
        Tikhonov strength used: a float, or ``[S]`` with draws (0 = exact).

    Attributes
    ----------
    mean, lower, upper, sd, probability_positive
        ``[d, d]`` read-only arrays; ``lower``, ``upper``, ``sd`` and ``probability_positive``
        (fraction of draws with ``W_ij > 0``) are ``None`` for a point estimate.
    draws
        ``[S, d, d]`` or ``None``.
    num_samples
        ``S``, or ``None`` for a point estimate.
    """

    def __init__(
        self,
        *,
        genes,
        targets,
        identified,
        mean=None,
        draws=None,
        probability: float | None = None,
        condition_number,
        regularization,
    ):
        if (mean is None) == (draws is None):
            raise ValueError("Give exactly one of mean (a point estimate) and draws (posterior).")
        self.genes = tuple(genes)
        self.targets = tuple(targets)
        self.identified = _frozen(identified, dtype=bool)
        self.probability = probability
        self.lower = self.upper = self.sd = self.probability_positive = None
        if draws is None:
            self.draws = None
            self.mean = _frozen(mean)
            self.condition_number = float(condition_number)
            self.regularization = float(regularization)
        else:
            self.draws = _frozen(draws)
            self.mean = _frozen(np.mean(self.draws, axis=0))
            tail = (1.0 - probability) / 2.0
            self.lower = _frozen(np.quantile(self.draws, tail, axis=0))
            self.upper = _frozen(np.quantile(self.draws, 1.0 - tail, axis=0))
            spread = (
                np.std(self.draws, axis=0, ddof=1)
                if len(self.draws) > 1
                else np.full(self.mean.shape, np.nan)
            )
            self.sd = _frozen(spread)
            positive = np.mean(self.draws > 0, axis=0)
            self.probability_positive = _frozen(np.where(np.isnan(self.mean), np.nan, positive))
            self.condition_number = _frozen(condition_number)
            self.regularization = _frozen(regularization)
        size = len(self.genes)
        if self.mean.shape != (size, size) or self.identified.shape != (size, size):
            raise ValueError(
                f"mean {self.mean.shape} and identified {self.identified.shape} must be "
                f"[{size}, {size}] for {size} genes."
            )

    @property
    def num_samples(self) -> int | None:
        """Number of posterior draws, or ``None`` for a point estimate."""
        return None if self.draws is None else self.draws.shape[0]

    def __repr__(self) -> str:
        size = len(self.genes)
        kind = "point estimate" if self.draws is None else f"{self.num_samples} draws"
        return (
            f"DirectEffects({size} genes, {len(self.targets)} perturbed, "
            f"{int(self.identified.sum())} of {size * (size - 1)} effects identified, {kind})"
        )

    # -- outputs -----------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """Tidy table: one row per ordered pair of distinct genes (an effect ``source -> target``).

        Columns ``source``, ``target`` (the gene acted on; not to be confused with the
        perturbation :attr:`targets`), ``mean``, ``sd`` (with draws only), ``lower``, ``upper``,
        ``probability_positive`` (NaN for a point estimate) and ``identified``. Unidentified
        rows have NaN estimates and ``identified=False``. Rows are sorted by ``|mean|``,
        largest first, NaN last; ties keep the order of targets then sources.
        """
        size = len(self.genes)
        rows, columns = np.nonzero(~np.eye(size, dtype=bool))
        names = np.empty(size, dtype=object)
        names[:] = self.genes

        def entries(matrix):
            return np.full(rows.size, np.nan) if matrix is None else matrix[rows, columns]

        frame = {"source": names[columns], "target": names[rows], "mean": entries(self.mean)}
        if self.draws is not None:
            frame["sd"] = entries(self.sd)
        frame["lower"] = entries(self.lower)
        frame["upper"] = entries(self.upper)
        frame["probability_positive"] = entries(self.probability_positive)
        frame["identified"] = self.identified[rows, columns]
        table = pd.DataFrame(frame)
        order = np.argsort(-np.abs(table["mean"].to_numpy()), kind="stable")  # NaN sorts last
        table = table.iloc[order].reset_index(drop=True)
        table.attrs["probability"] = self.probability
        return table

    def _selected(self, threshold: float) -> np.ndarray:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}.")
        selected = self.identified & (np.abs(np.nan_to_num(self.mean)) > threshold)
        if self.draws is not None:
            selected &= (self.lower > 0) | (self.upper < 0)
        return selected

    def to_networkx(self, threshold: float = 0.0) -> nx.DiGraph:
        """The graph of the direct effects: edge ``source -> target`` for each selected effect.

        An identified effect is an edge when ``|mean| > threshold`` and, with posterior draws,
        its credible interval excludes zero. Unidentified effects are never edges. Every gene is
        a node.

        Returns
        -------
        networkx.DiGraph
            Edge attributes ``weight`` (the mean) and, with draws, ``lower``, ``upper`` and
            ``probability_positive``.
        """
        selected = self._selected(threshold)
        attributes = {}
        if self.draws is not None:
            attributes = {
                name: np.where(selected, values, 0.0)
                for name, values in (
                    ("lower", self.lower),
                    ("upper", self.upper),
                    ("probability_positive", self.probability_positive),
                )
            }
        weights = np.where(selected, self.mean, 0.0)
        graph = graph_from_drift(weights, self.genes, edge_attributes=attributes)
        graph.graph["probability"] = self.probability
        return graph

    def adjacency_scores(self, score: str | None = None, *, unidentified: float = np.nan):
        """Edge scores in **graph orientation** ``[source, target]``, for :mod:`causalcell.metrics`.

        Parameters
        ----------
        score
            ``"magnitude"``: ``|mean|``; ``"sign_probability"`` (draws only): the posterior
            probability of the more probable sign, ``max(P(W > 0), P(W < 0))`` (in [0.5, 1]).
            Default: ``"sign_probability"`` with draws, else ``"magnitude"``.
        unidentified
            Value of unidentified effects: NaN by default, so that nothing is filled silently
            (:func:`causalcell.metrics.auprc` then refuses them); pass e.g. ``0.0`` to rank
            them last on purpose.

        Returns
        -------
        numpy.ndarray
            ``[d, d]``; ``scores[s, t]`` scores the edge ``s -> t``; 0 on the diagonal.
        """
        if score is None:
            score = "magnitude" if self.draws is None else "sign_probability"
        if score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {score!r}.")
        if score == "sign_probability":
            if self.draws is None:
                raise ValueError(
                    "score='sign_probability' needs posterior draws (posterior_direct_effects); "
                    "a point estimate has only score='magnitude'."
                )
            negative = np.mean(self.draws < 0, axis=0)
            values = np.maximum(self.probability_positive, negative)
        else:
            values = np.abs(self.mean)
        return swap_orientation(np.where(self.identified, values, unidentified))

    def to_causal_result(self) -> CausalResult:
        """The draws as a :class:`causalcell.CausalResult` with dims ``("target", "source")``.

        Raises
        ------
        ValueError
            For a point estimate (no draws).
        """
        if self.draws is None:
            raise ValueError("A point estimate has no draws; use posterior_direct_effects.")
        return CausalResult(
            {"direct_effect": self.draws},
            dims={"direct_effect": ("target", "source")},
            coords={"target": list(self.genes), "source": list(self.genes)},
            attrs={"identified": self.identified, "perturbed": self.targets},
        )

    def plot(self, ax=None):
        """Heatmap of the mean effects; see :func:`causalcell.clipr.plot_direct_effects`."""
        return plot_direct_effects(self, ax=ax)
