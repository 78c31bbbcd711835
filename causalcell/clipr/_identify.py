"""CLIPR: direct effects from the responses of a shift screen (DESIGN 4).

Under a linear drift ``dx = (A x + b) dt + sigma dW`` (row = target, DESIGN 2.3), a shift of
size ``delta_j`` on gene ``j`` moves the stationary mean by ``-A^{-1} e_j delta_j``. Two views
of the same identity give the estimators below.

**Full screen** (every gene perturbed once): ``R = -A^{-1} D`` with ``D`` diagonal and unknown,
so ``R^{-1} = -D^{-1} A``: row ``i`` of ``R^{-1}`` is ``-A[i, :] / D_ii`` and
``W_ij = -(R^{-1})_ij / (R^{-1})_ii = A_ij / (-A_ii)`` whatever the shift sizes.

**Any screen, gene by gene**: a perturbation that does not target gene ``i`` leaves row ``i`` of
the fixed-point equation ``A mu + b + delta = 0`` intact, so its response ``r`` obeys
``r_i = sum_{j != i} W_ij r_j``. Stacking the ``k_i`` perturbations that do not target ``i`` gives
a linear system for row ``i`` of ``W`` with the responses of the other genes,
``L_i = R[-i, columns not targeting i]`` (``(d - 1) x k_i``), as its matrix. ``W_ij`` is
identified iff the unit vector ``e_j`` lies in the column space of ``L_i`` (every solution of
the system then agrees on it). For a generic drift that needs ``rank L_i = d - 1``, i.e. at
least ``d - 1`` perturbations of genes other than ``i``: in a screen of ``k < d`` genes only the
rows of **unperturbed** genes can be identified, and only when ``k = d - 1``; sparse drifts can
identify single further entries (e.g. a perturbed gene ``j`` whose response outside row ``i``
is ``e_j`` alone). The rows of the pseudo-inverse of ``R_S = -A^{-1} D_S`` are *not* the rows of
``-D^{-1} A`` when ``k < d``: they are the minimum-norm left inverse, which differs from the truth
by a component orthogonal to the columns of ``R_S``.
"""

from __future__ import annotations

import warnings

import numpy as np

from causalcell._core.errors import CausalcellWarning
from causalcell.clipr._inputs import Screen, parse_screen
from causalcell.clipr._result import DirectEffects

__all__ = [
    "IllConditionedResponsesWarning",
    "NotIdentifiedWarning",
    "direct_effects",
    "posterior_direct_effects",
]

#: Default Tikhonov strength relative to the largest eigenvalue of ``R R^T``: it damps
#: directions whose singular value is below ~1e-3 of the largest (relative noise of a few cells)
#: and biases well-conditioned estimates by at most ~1e-6 times their condition number squared.
DEFAULT_RELATIVE_REGULARIZATION = 1e-6

#: ``W_ij`` counts as identified when ``e_j`` lies in the column space of ``L_i`` up to this
#: squared distance (``1 - leverage``). Exact float64 responses give ~1e-15; noise of relative
#: size ``epsilon`` gives ~``epsilon**2``, so 1e-8 accepts only noise below ~1e-4.
IDENTIFICATION_TOLERANCE = 1e-8


class IllConditionedResponsesWarning(CausalcellWarning):
    """The response matrix is nearly singular, so direct effects are unstable or regularised."""


class NotIdentifiedWarning(CausalcellWarning):
    """The screen identifies no direct effect at all (every estimate is NaN)."""


def _check_settings(regularization, rcond_warning) -> float | None:
    if not rcond_warning >= 1:
        raise ValueError(
            f"rcond_warning is a condition-number threshold >= 1, got {rcond_warning}."
        )
    if regularization is None:
        return None
    strength = float(regularization)
    if not (np.isfinite(strength) and strength >= 0):
        raise ValueError(
            f"regularization is a Tikhonov strength >= 0 (or None for the default), got "
            f"{regularization}."
        )
    return strength


def _strengths(largest, condition, regularization: float | None, rcond_warning: float):
    """Tikhonov strength per draw: ``regularization`` if given, else 0 while ``condition`` is at
    most ``rcond_warning`` and ``DEFAULT_RELATIVE_REGULARIZATION`` times the largest eigenvalue
    of ``R R^T`` (``largest`` is the largest singular value of ``R``) above it."""
    if regularization is not None:
        return np.full(condition.shape, regularization)
    return np.where(condition <= rcond_warning, 0.0, DEFAULT_RELATIVE_REGULARIZATION * largest**2)


def _full_screen(matrices: np.ndarray, regularization: float | None, rcond_warning: float):
    """Direct effects from square responses whose column ``j`` perturbs gene ``j``."""
    singular = np.linalg.svd(matrices, compute_uv=False)
    with np.errstate(divide="ignore"):
        condition = singular[:, 0] / singular[:, -1]
    strengths = _strengths(singular[:, 0], condition, regularization, rcond_warning)
    inverses = np.empty_like(matrices)
    exact = strengths == 0
    if exact.any():
        try:
            inverses[exact] = np.linalg.inv(matrices[exact])
        except np.linalg.LinAlgError:
            raise ValueError(
                "The responses are singular and regularization=0 asks for the exact inverse; "
                "pass regularization > 0 (or None for the default)."
            ) from None
    if (~exact).any():
        # R^T (R R^T + lambda I)^{-1} = [(R R^T + lambda I)^{-1} R]^T, the Gram matrix being
        # symmetric.
        regularized = matrices[~exact]
        gram = regularized @ np.swapaxes(regularized, -1, -2)
        gram += strengths[~exact, None, None] * np.eye(matrices.shape[-1])
        inverses[~exact] = np.swapaxes(np.linalg.solve(gram, regularized), -1, -2)
    diagonal = np.diagonal(inverses, axis1=-2, axis2=-1)
    effects = -inverses / diagonal[..., :, None] + 0.0  # + 0.0 turns -0.0 into 0.0
    # The diagonal is self-decay (-1 after normalising), not an edge: 0 by convention.
    effects[:, np.arange(matrices.shape[-1]), np.arange(matrices.shape[-1])] = 0.0
    identified = ~np.eye(matrices.shape[-1], dtype=bool)
    return effects, identified, condition, strengths


def _gene_by_gene(
    responses: np.ndarray,
    target_index: np.ndarray,
    regularization: float | None,
    rcond_warning: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Regress each gene's response on the others' over the perturbations not targeting it.

    Returns the effects ``[S, d, d]`` (NaN where not identified), the identified mask
    ``[d, d]`` (identified in every draw), and per draw the largest condition number of a
    gene's system on its numerical column space (NaN if nothing is identified) and the largest
    Tikhonov strength used.
    """
    num_draws, num_genes, _ = responses.shape
    effects = np.full((num_draws, num_genes, num_genes), np.nan)
    identified = np.zeros((num_genes, num_genes), dtype=bool)
    condition = np.full((num_draws, num_genes), np.nan)
    strengths = np.zeros((num_draws, num_genes))
    largest = np.linalg.norm(responses, ord=2, axis=(-2, -1))
    for gene in range(num_genes):
        columns = target_index != gene
        others = np.arange(num_genes) != gene
        if not columns.any():
            continue
        system = responses[:, others][:, :, columns]
        observed = responses[:, gene, columns]
        left, singular, right = np.linalg.svd(system, full_matrices=False)
        # numpy.linalg.matrix_rank's default cutoff.
        cutoff = singular[:, :1] * max(system.shape[1:]) * np.finfo(np.float64).eps
        kept = singular > cutoff
        leverage = np.einsum("sgm,sm->sg", left**2, kept)
        reached = np.all(leverage >= 1.0 - IDENTIFICATION_TOLERANCE, axis=0)
        if not reached.any():
            continue
        condition[:, gene] = singular[:, 0] / np.min(np.where(kept, singular, np.inf), axis=-1)
        strengths[:, gene] = _strengths(largest, condition[:, gene], regularization, rcond_warning)
        filtered = np.where(kept, singular / (singular**2 + strengths[:, gene, None]), 0.0)
        # Tikhonov solution U diag(filtered) V^T r, contracted pairwise (O(S d k) per gene).
        coefficients = filtered * np.einsum("smk,sk->sm", right, observed)
        solution = np.einsum("sgm,sm->sg", left, coefficients) + 0.0  # + 0.0: -0.0 -> 0.0
        effects[:, gene, others] = np.where(reached, solution, np.nan)
        identified[gene, others] = reached
    effects[:, np.arange(num_genes), np.arange(num_genes)] = 0.0
    reported = identified.any(axis=1)
    worst = condition[:, reported].max(axis=1) if reported.any() else condition[:, 0]
    return effects, identified, worst, strengths.max(axis=1)


def _estimate(screen: Screen, regularization, rcond_warning):
    """Effects ``[S, d, d]``, identified ``[d, d]``, condition and strength per draw; warns."""
    regularization = _check_settings(regularization, rcond_warning)
    if not np.any(screen.responses, axis=(1, 2)).all():
        raise ValueError(
            "Some response matrix is all zeros: the perturbations moved nothing, so no direct "
            "effect can be read off. Check the perturbation sizes and the control subtraction."
        )
    num_draws, num_genes, num_perturbations = screen.responses.shape
    full = num_perturbations == num_genes
    if full:
        order = np.argsort(screen.target_index)
        effects, identified, condition, strengths = _full_screen(
            screen.responses[:, :, order], regularization, rcond_warning
        )
    else:
        effects, identified, condition, strengths = _gene_by_gene(
            screen.responses, screen.target_index, regularization, rcond_warning
        )
        if not identified.any():
            warnings.warn(
                f"No direct effect is identified by {num_perturbations} perturbations of "
                f"{num_genes} genes: row i of W needs the responses to d - 1 = {num_genes - 1} "
                "perturbations of genes other than i. Every estimate is NaN; perturb more genes.",
                NotIdentifiedWarning,
                stacklevel=3,
            )
    unstable = condition > rcond_warning  # NaN (nothing identified) is never unstable
    if regularization is None and unstable.any():
        worst = float(np.max(condition[unstable]))
        what = "the response matrix" if full else "a gene's regression on the others"
        draws = f" in {int(unstable.sum())} of {num_draws} draws" if num_draws > 1 else ""
        warnings.warn(
            f"The condition number of {what} is {worst:.3g}{draws}, above rcond_warning="
            f"{rcond_warning:.3g}; Tikhonov regularization was applied (strength "
            f"{float(np.max(strengths)):.3g}), so the direct effects are biased and unstable. "
            "Estimate the responses from more cells, use larger shifts, or set "
            "regularization= explicitly (which silences this).",
            IllConditionedResponsesWarning,
            stacklevel=3,
        )
    if not np.isfinite(effects[:, identified]).all():
        raise ValueError(
            "Some identified direct effect is not finite (a gene's own normalising term "
            "vanished); pass a larger regularization or drop the genes whose perturbation "
            "has no effect on themselves."
        )
    return effects, identified, condition, strengths


def direct_effects(
    responses,
    *,
    genes=None,
    targets=None,
    regularization: float | None = None,
    rcond_warning: float = 1e8,
) -> DirectEffects:
    """Direct effects ``W_ij = A_ij / (-A_ii)`` from the mean responses of a shift screen.

    Parameters
    ----------
    responses
        ``[d, k]`` array, or a ``pandas.DataFrame`` whose index names the ``d`` measured genes
        and whose columns name the perturbed gene of each column. Column ``p`` is the change
        of the stationary mean (e.g. pseudobulk ``mu_p - mu_ctrl``) under a shift of unknown
        size and sign on gene ``targets[p]``. At most one column per gene (``k <= d``).
    genes
        Names of the rows of an array (default ``"g0", ..., "g{d-1}"``).
    targets
        Perturbed gene of each column of an array, by name or row index (a name is looked up
        first). Required when ``k < d``; when ``k == d`` it defaults to ``genes`` (column ``j``
        perturbs gene ``j``).
    regularization
        Tikhonov strength ``lambda``. ``None`` (default): exact (``lambda = 0``) while the
        solved system's condition number is at most ``rcond_warning``; above it,
        ``lambda = 1e-6 * ||R||_2^2`` (the largest eigenvalue of ``R R^T``) and a warning. A
        number is used as given everywhere (0: exact inverse / minimum-norm solution).
    rcond_warning
        Condition number above which an :class:`IllConditionedResponsesWarning` is raised
        (only when ``regularization`` is ``None``).

    Returns
    -------
    DirectEffects
        ``mean[i, j]`` = direct effect of gene ``j`` on gene ``i`` (row = target, as the drift)
        relative to ``i``'s self-decay; 0 on the diagonal; NaN where ``identified`` is False.

    Raises
    ------
    ValueError
        On a shape mismatch, ``k > d``, non-finite responses, unknown or duplicated targets or
        genes, all-zero responses, or a negative ``regularization``.

    Warns
    -----
    IllConditionedResponsesWarning
        If the solved system's condition number exceeds ``rcond_warning`` (and
        ``regularization`` is None); the number is kept in ``condition_number``.
    NotIdentifiedWarning
        If a partial screen identifies no effect at all.

    Notes
    -----
    **Which effects are identified.** A full screen identifies every ``W_ij`` for arbitrary
    unknown shift sizes: ``R^{-1} = -D^{-1} A``, so ``W_ij = -(R^{-1})_ij / (R^{-1})_ii``.
    For a partial screen (``k < d``) the estimate is built gene by gene: the perturbations not
    targeting gene ``i`` leave its equation intact, so their responses obey
    ``r_i = sum_j W_ij r_j``; with ``L_i`` the responses of the other genes to them, row ``i``
    of ``W`` is the Tikhonov solution ``(L_i L_i^T + lambda I)^{-1} L_i r_i`` and ``W_ij`` is
    identified iff ``e_j`` lies in the column space of ``L_i``. Generically that means: the row
    of gene ``i`` is identified iff at least ``d - 1`` genes other than ``i`` were perturbed,
    i.e. in a partial screen only for the unperturbed gene of a ``k = d - 1`` screen; the rows
    of perturbed genes are never identified when ``k < d``. Unidentified entries are NaN and
    flagged in every output, never filled.

    References
    ----------
    causalcell DESIGN section 4 (CLIPR: the identity ``W = -(R^{-1})_ij / (R^{-1})_ii`` for
    latent causal diffusions). Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling
    with stationary diffusions. AISTATS.

    Examples
    --------
    >>> import numpy as np
    >>> drift = np.array([[-1.0, 0.0], [0.5, -2.0]])  # gene g0 activates gene g1
    >>> responses = -np.linalg.inv(drift) @ np.diag([0.3, -2.0])  # arbitrary shift sizes
    >>> direct_effects(responses).mean  # A_ij / (-A_ii)
    array([[0.  , 0.  ],
           [0.25, 0.  ]])
    """
    screen = parse_screen(responses, genes, targets, draws=False, name="responses")
    effects, identified, condition, strengths = _estimate(screen, regularization, rcond_warning)
    return DirectEffects(
        genes=screen.genes,
        targets=screen.targets,
        identified=identified,
        mean=effects[0],
        condition_number=float(condition[0]),
        regularization=float(strengths[0]),
    )


def posterior_direct_effects(
    response_draws,
    *,
    genes=None,
    targets=None,
    regularization: float | None = None,
    probability: float = 0.9,
    rcond_warning: float = 1e8,
) -> DirectEffects:
    """Posterior of the direct effects: :func:`direct_effects` applied to every draw.

    Parameters
    ----------
    response_draws
        ``[S, d, k]``: one response matrix per posterior draw (e.g. from
        :func:`linear_responses` of posterior drift draws).
    genes, targets, regularization, rcond_warning
        As in :func:`direct_effects`; the default strength is set per draw.
    probability
        Mass of the equal-tailed credible intervals ``lower``/``upper``.

    Returns
    -------
    DirectEffects
        With ``draws`` ``[S, d, d]``, posterior ``mean``, ``lower``/``upper``, ``sd`` and
        ``probability_positive`` (the fraction of draws with ``W_ij > 0``). An entry is
        identified only if it is identified in every draw.

    Raises
    ------
    ValueError
        As :func:`direct_effects`, or if ``probability`` is outside (0, 1).

    References
    ----------
    causalcell DESIGN section 4. Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling
    with stationary diffusions. AISTATS.

    Examples
    --------
    >>> import numpy as np
    >>> drift = np.array([[-1.0, 0.0], [0.5, -2.0]])
    >>> draws = np.stack([-np.linalg.inv(drift) * scale for scale in (0.5, 1.0, 2.0)])
    >>> posterior = posterior_direct_effects(draws)
    >>> posterior.num_samples, float(posterior.probability_positive[1, 0])
    (3, 1.0)
    """
    if not 0 < probability < 1:
        raise ValueError(f"probability must lie in (0, 1), got {probability}.")
    screen = parse_screen(response_draws, genes, targets, draws=True, name="response_draws")
    effects, identified, condition, strengths = _estimate(screen, regularization, rcond_warning)
    return DirectEffects(
        genes=screen.genes,
        targets=screen.targets,
        identified=identified,
        draws=effects,
        probability=probability,
        condition_number=condition,
        regularization=strengths,
    )
