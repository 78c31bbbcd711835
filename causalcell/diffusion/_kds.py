"""Kernel deviation from stationarity (KDS): how far a sample is from the stationary law of an SDE.

For ``dx = f(x) dt + diag(sigma) dW`` the generator is

``L g(x) = f(x) . grad g(x) + 1/2 sum_j sigma_j^2 d^2 g / dx_j^2``,

and a law ``p`` is stationary iff ``E_p[L g] = 0`` for every test function ``g``. Taking the test
functions in the unit ball of a kernel's RKHS gives the KDS of Lorch et al. (2024): the squared
RKHS norm of ``E_{x ~ p}[L_x k(x, .)]``, which equals ``E_{x, y ~ p}[L_x L_y k(x, y)]``. It is
zero when ``p`` is stationary (and, for characteristic kernels and regular drifts, only then),
needs no trajectory roll-outs, and is differentiable in the drift, the noise and the sample.

Closed form for the RBF kernel
------------------------------
``k(x, y) = exp(-|r|^2 / (2 h^2))`` with ``r = x - y`` and ``lambda = 1 / h^2``. Write
``f = f(x)``, ``g = f(y)``, ``s = sigma(x)^2`` and ``t = sigma(y)^2`` (per-gene variances; the
two points may belong to SDEs with different noise, e.g. a noise-scale intervention). Then
``L_x k = k phi`` with

``phi = -lambda f.r + lambda^2 / 2 sum_j s_j r_j^2 - lambda / 2 sum_j s_j``,

and applying ``L_y`` (``d/dy = -d/dr``) gives ``L_x L_y k = k (A + B)`` with

``A = lambda f.g - lambda^2 sum_j g_j s_j r_j + lambda phi g.r``,

``B = lambda^2 / 2 sum_j s_j t_j + lambda^2 sum_j t_j f_j r_j - lambda^3 sum_j s_j t_j r_j^2
+ phi / 2 (lambda^2 sum_j t_j r_j^2 - lambda sum_j t_j)``.

Every sum over genes of a product of per-point factors and powers of ``r_j = x_j - y_j`` is
expanded into matrix products of ``[n, d]`` arrays, so memory is ``O(n^2 + n d)`` (never
``[n, n, d]``) and time ``O(n^2 d)``. The expansion is done on the sample minus its mean (all
terms depend on ``x - y`` only), which keeps the cancellation in ``|x|^2 - 2 x.y + |y|^2`` at the
scale of the sample's spread rather than of its location. What remains is a round-off of about
``eps |x - mean|^2`` on each ``|x - y|^2``, i.e. a relative error of ``eps R^2`` for points ``R``
spreads away from the mean: ~1e-3 at ``R = 100`` in float32, harmless for perturbation screens
(conditions a few nats apart, spreads of tenths); use float64 for widely separated clusters.

U- and V-statistics
-------------------
Write ``xi_a = L_a k(x_a, .)`` (an element of the RKHS) and ``H_ab = <xi_a, xi_b> = L_a L_b
k(x_a, x_b)``. The V-statistic ``1 / n^2 sum_{a, b} H_ab = |1 / n sum_a xi_a|^2`` is the squared
RKHS norm of the empirical measure's generator action, so it is non-negative for every drift,
noise and sample; the U-statistic ``1 / (n (n - 1)) sum_{a != b} H_ab`` drops the diagonal, which
makes it unbiased for the population KDS but no longer a norm. For a drift linear in its
parameters both are quadratic forms in them: V's is a Gram matrix (positive semi-definite), U's
is that minus the diagonal's and is in general indefinite, so a fit that minimises U can move the
drift along a negative direction without bound (a d = 20 linear fit ran off to an unstable
drift). Train on V, report U. They are tied by ``V_n = ((n - 1) U_n + mean_a H_aa) / n``, and at
``r = 0`` (``k = 1``, ``phi = -lambda / 2 sum_j s_j``) the closed form above gives the diagonal

``H_aa = lambda |f(x_a)|^2 + lambda^2 / 2 sum_j s_j^2 + lambda^2 / 4 (sum_j s_j)^2``,

which is what the V-statistic adds (computed from this expression, not from the ``[n, n]``
expansion, whose diagonal is a difference of equal terms).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["kds"]

KERNELS = ("rbf",)
STATISTICS = ("u", "v")


def kds(
    drift: Callable,
    sigma,
    x,
    kernel: str = "rbf",
    *,
    bandwidth=None,
    weights=None,
    statistic: str = "u",
):
    """Kernel deviation from stationarity of the sample ``x`` for ``dx = f dt + diag(sigma) dW``.

    With ``H_ab = L_a L_b k(x_a, x_b)``: the U-statistic ``1 / (n (n - 1)) sum_{a != b} H_ab``
    (``statistic="u"``) or the V-statistic ``1 / n^2 sum_{a, b} H_ab`` (``statistic="v"``,
    diagonal included). The U-statistic is unbiased for the population KDS, which is zero at
    stationarity, so it is the estimate to report; it can be slightly negative, and as a training
    loss it is unbounded below (its quadratic form in a linear drift is indefinite). The
    V-statistic is the squared RKHS norm of ``1 / n sum_a L_a k(x_a, .)``, the generator applied
    to the empirical measure, hence ``>= 0`` for every drift: the loss to train on. Its bias is
    ``(mean_a H_aa - U) / n`` (module docstring, "U- and V-statistics").

    Parameters
    ----------
    drift
        Batched drift: ``f(x)`` maps ``[n, d]`` to ``[n, d]`` (row ``a`` is the drift at
        ``x[a]``). It may differ per row, e.g. ``intervene(drift, interventions[condition])``
        with one intervention row per point; a per-point function ``[d] -> [d]`` can be passed
        as ``jax.vmap(function)``.
    sigma
        Diffusion scales: a scalar, ``[d]``, or ``[n, d]`` (one row per point).
    x
        ``[n, d]`` sample.
    kernel
        ``"rbf"``: ``k(x, y) = exp(-|x - y|^2 / (2 h^2))``.
    bandwidth
        Length scale ``h`` (scalar). ``None``: the median heuristic, ``h`` = median distance
        between the distinct pairs that count (positive weight, ``a != b`` for either
        statistic), under ``stop_gradient`` so that the bandwidth is a fixed scale, not
        something the optimiser can move.
    weights
        Optional. ``[n]`` sample weights ``w``: the weighted U-statistic
        ``sum_{a != b} w_a w_b H_ab / sum_{a != b} w_a w_b`` (0 drops a point), or the weighted
        V-statistic ``sum_{a, b} w_a w_b H_ab / (sum_a w_a)^2``. ``[n, n]`` pair weights ``W``:
        ``sum_{a != b} W_ab H_ab`` (U; diagonal ignored) or ``sum_{a, b} W_ab H_ab`` (V; diagonal
        included), used as given (not normalised). With ``W_ab = [g_a = g_b] / (n_g (n_g - 1))``
        for group labels ``g`` (group sizes ``n_g``) the U result is the sum of the groups' own
        U-statistics, and with ``W_ab = [g_a = g_b] / n_g^2`` the V result the sum of their
        V-statistics: points of different groups (e.g. cells of different perturbations, which
        follow different SDEs) are never compared. A V-statistic with pair weights is ``>= 0``
        when ``W`` is positive semi-definite (as these block-constant weights are).
    statistic
        ``"u"`` (unbiased; for reporting) or ``"v"`` (non-negative; for training).

    Returns
    -------
    jax.Array
        Scalar KDS estimate (units of ``(drift / bandwidth)^2``).

    Raises
    ------
    ValueError
        For an unknown kernel or mismatched shapes.

    References
    ----------
    Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
    AISTATS (arXiv:2310.17405).
    Gretton, A. et al. (2012). A kernel two-sample test. JMLR 13 (U- and V-statistics, median
    heuristic).

    Examples
    --------
    Exact draws of an Ornstein-Uhlenbeck law have KDS near zero at the true drift only:

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.sqrt(0.5) * jax.random.normal(jax.random.key(0), (1000, 1))  # N(0, 1/2)
    >>> near_zero = kds(lambda x: -x, 1.0, x)
    >>> too_fast = kds(lambda x: -3.0 * x, 1.0, x)
    >>> bool(abs(near_zero) < 0.05 * too_fast)
    True

    The V-statistic adds the diagonal pairs and is never negative:

    >>> bool(kds(lambda x: -x, 1.0, x, statistic="v") >= 0.0)
    True
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}.")
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape [n, d], got {x.shape}.")
    num_points = x.shape[0]
    values = jnp.asarray(drift(x))
    if values.shape != x.shape:
        raise ValueError(
            f"drift(x) must return the shape of x {x.shape} (a batched drift), got "
            f"{values.shape}; wrap a per-point drift in jax.vmap."
        )
    variance = jnp.broadcast_to(jnp.square(jnp.asarray(sigma, x.dtype)), x.shape)
    pair_weights = _pair_weights(weights, num_points, x.dtype, statistic)
    off_diagonal = 1.0 - jnp.eye(num_points, dtype=x.dtype)
    centered = x - jax.lax.stop_gradient(jnp.mean(x, axis=0))
    if bandwidth is None:
        bandwidth = _median_distance(centered, pair_weights * off_diagonal)
    precision = 1.0 / jnp.square(jnp.asarray(bandwidth, x.dtype))
    terms = _rbf_double_generator(centered, values, variance, precision)
    distinct = jnp.sum(pair_weights * off_diagonal * terms)
    if statistic == "u":
        return distinct
    diagonal = _rbf_diagonal(values, variance, precision)
    return distinct + jnp.sum(jnp.diagonal(pair_weights) * diagonal)


def _pair_weights(weights, num_points: int, dtype, statistic: str):
    """``[n, n]`` pair weights, normalised as the statistic needs (U: diagonal unused)."""
    off_diagonal = 1.0 - jnp.eye(num_points, dtype=dtype)
    if weights is None:
        if statistic == "u":
            return off_diagonal / (num_points * (num_points - 1))
        return jnp.full((num_points, num_points), 1.0 / num_points**2, dtype)
    weights = jnp.asarray(weights, dtype)
    if weights.shape == (num_points,):
        pairs = weights[:, None] * weights[None, :]
        if statistic == "u":
            pairs = pairs * off_diagonal
        return pairs / jnp.sum(pairs)
    if weights.shape == (num_points, num_points):
        return weights
    raise ValueError(
        f"weights must have shape [n] or [n, n] with n = {num_points}, got {weights.shape}."
    )


def _rbf_diagonal(f, s, precision):
    """``[n]`` diagonal ``L_x L_y k(x_a, x_a)`` of the RBF kernel (module docstring)."""
    return (
        precision * jnp.sum(jnp.square(f), axis=-1)
        + 0.5 * precision**2 * jnp.sum(jnp.square(s), axis=-1)
        + 0.25 * precision**2 * jnp.square(jnp.sum(s, axis=-1))
    )


def _squared_distances(x):
    norms = jnp.sum(jnp.square(x), axis=-1)
    return jnp.maximum(norms[:, None] + norms[None, :] - 2.0 * x @ x.T, 0.0)


@jax.jit
def _median_distance(x, pair_weights):
    """Median distance over the pairs with positive weight (no gradient flows through it)."""
    squared = jax.lax.stop_gradient(_squared_distances(x))
    counted = jnp.where(pair_weights > 0, squared, jnp.nan)
    return jnp.sqrt(jnp.nanmedian(counted))


# Jitted so that an eager call (e.g. a model traced op by op at initialisation) compiles one
# computation rather than each of its ~60 operations; under an outer jit it is inlined.
@jax.jit
def _rbf_double_generator(x, f, s, precision):
    """``[n, n]`` matrix of ``L_x L_y k(x_a, x_b)`` for the RBF kernel (module docstring).

    ``x`` the (centred) points, ``f`` the drift at them, ``s`` the per-point noise variances,
    all ``[n, d]``; ``precision`` is ``1 / h^2``. Row ``a`` plays ``x``, column ``b`` plays
    ``y``; every pair sum over genes is written as ``[n, d] @ [d, n]`` products.
    """
    squared_x = jnp.square(x)

    def rows_dot_columns(row_factor, column_factor):
        # sum_j row_factor[a, j] * column_factor[b, j]
        return row_factor @ column_factor.T

    def row_total(values):
        return jnp.sum(values, axis=-1)[:, None]

    def column_total(values):
        return jnp.sum(values, axis=-1)[None, :]

    distance = _squared_distances(x)
    kernel = jnp.exp(-0.5 * precision * distance)
    # f.r, g.r and f.g with r = x_a - x_b, f = f(x_a), g = f(x_b).
    f_dot_r = row_total(f * x) - rows_dot_columns(f, x)
    g_dot_r = rows_dot_columns(x, f) - column_total(f * x)
    f_dot_g = rows_dot_columns(f, f)
    # sum_j s_j r_j^2, sum_j t_j r_j^2, sum_j s_j t_j r_j^2 (s at a, t at b).
    s_r2 = (
        row_total(s * squared_x) - 2.0 * rows_dot_columns(s * x, x) + rows_dot_columns(s, squared_x)
    )
    t_r2 = (
        rows_dot_columns(squared_x, s)
        - 2.0 * rows_dot_columns(x, s * x)
        + column_total(s * squared_x)
    )
    s_t_r2 = (
        rows_dot_columns(s * squared_x, s)
        - 2.0 * rows_dot_columns(s * x, s * x)
        + rows_dot_columns(s, s * squared_x)
    )
    # sum_j g_j s_j r_j and sum_j t_j f_j r_j.
    g_s_r = rows_dot_columns(s * x, f) - rows_dot_columns(s, f * x)
    t_f_r = rows_dot_columns(f * x, s) - rows_dot_columns(f, s * x)
    s_dot_t = rows_dot_columns(s, s)
    s_total = row_total(s)
    t_total = column_total(s)

    phi = -precision * f_dot_r + 0.5 * precision**2 * s_r2 - 0.5 * precision * s_total
    first = precision * f_dot_g - precision**2 * g_s_r + precision * phi * g_dot_r
    second = (
        0.5 * precision**2 * s_dot_t
        + precision**2 * t_f_r
        - precision**3 * s_t_r2
        + 0.5 * phi * (precision**2 * t_r2 - precision * t_total)
    )
    return kernel * (first + second)
