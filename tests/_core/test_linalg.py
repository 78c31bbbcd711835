"""The factorisations of causalcell._core.linalg (one matrix at a time, and the pure-JAX loops)
against jnp.linalg / jax.scipy.linalg."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jaxlib.version
import numpy as np
import numpyro.distributions as dist
import pytest

from causalcell._core import gaussian as _gaussian
from causalcell._core import linalg as _linalg

# Relative tolerances (max error over max magnitude). The test matrices have condition
# numbers below ~30, so both routes carry round-off of order cond * n * eps: about 1e-5 in
# float32 (eps 1.2e-7; observed ~3e-7) and 1e-12 in float64 (eps 2.2e-16; observed ~1e-15).
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def route(request, monkeypatch):
    """Every test exercises a route that avoids batched LAPACK, whatever the installed jaxlib:
    one matrix at a time, and, where a test is marked with :data:`BOTH_ROUTES`, the pure
    loops (the fallback) too."""
    chosen = getattr(request, "param", "sequential")
    monkeypatch.setattr(_linalg, "CPU_MODE", chosen)
    return chosen


BOTH_ROUTES = pytest.mark.parametrize("route", ["sequential", "loops"], indirect=True)


def relative_error(value, reference):
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return np.max(np.abs(value - reference)) / np.max(np.abs(reference))


def stable(rng, batch, order, dtype):
    """Non-symmetric matrices like a stable drift: -order * I plus unit-scale noise."""
    return (rng.normal(size=(*batch, order, order)) - order * np.eye(order)).astype(dtype)


def positive_definite(rng, batch, order, dtype):
    factor = rng.normal(size=(*batch, order, order))
    return (factor @ np.swapaxes(factor, -1, -2) + order * np.eye(order)).astype(dtype)


def triangular_solve(pure: bool, lower: bool, transpose: bool):
    def call(matrix, rhs):
        if pure:
            return _linalg.solve_triangular(matrix, rhs, lower=lower, transpose=transpose)
        return jsl.solve_triangular(matrix, rhs, lower=lower, trans=int(transpose))

    return call


def cases(rng, dtype, batch=(2, 3), order=6):
    """(name, pure function, reference function, arguments) for every operation; from order
    ``2 * BLOCK`` only the blocked ones (the inverse and solve have no blocked form)."""
    square = stable(rng, batch, order, dtype)
    spd = positive_definite(rng, batch, order, dtype)
    rhs = rng.normal(size=(*batch, order, 2)).astype(dtype)
    lower = np.asarray(jnp.linalg.cholesky(spd))
    upper = np.swapaxes(lower, -1, -2)
    found = [
        ("cholesky", _linalg.cholesky, jnp.linalg.cholesky, (spd,)),
        ("inv", _linalg.inv, jnp.linalg.inv, (square,)),
        ("solve", _linalg.solve, jnp.linalg.solve, (square, rhs)),
        (
            "cho_solve",
            lambda c, b: _linalg.cho_solve((c, True), b),
            lambda c, b: jsl.cho_solve((c, True), b),
            (lower, rhs),
        ),
    ]
    for is_lower in (True, False):
        for transpose in (False, True):
            found.append(
                (
                    f"triangular lower={is_lower} transpose={transpose}",
                    triangular_solve(True, is_lower, transpose),
                    triangular_solve(False, is_lower, transpose),
                    (lower if is_lower else upper, rhs),
                )
            )
    if order >= 2 * _linalg.BLOCK:
        return [case for case in found if case[0] not in ("inv", "solve")]
    return found


#: Orders of the test matrices: the one-column loops, and the blocked ones with a partial
#: last block (orders from 2 * BLOCK on).
ORDERS = [6, 2 * _linalg.BLOCK + 13]


@BOTH_ROUTES
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_match_lapack(dtype, order):
    with jax.enable_x64(dtype == np.float64):
        for name, pure, reference, arguments in cases(np.random.default_rng(0), dtype, order=order):
            value = pure(*arguments)
            assert value.dtype == dtype, name
            assert relative_error(value, reference(*arguments)) < TOLERANCE[dtype], name


# The blocked order in float32 only: its float64 run adds 15 s and checks the same rules.
@BOTH_ROUTES
@pytest.mark.parametrize(
    ("dtype", "order"), [(np.float32, ORDERS[0]), (np.float64, ORDERS[0]), (np.float32, ORDERS[1])]
)
def test_gradients_match_lapack(dtype, order):
    with jax.enable_x64(dtype == np.float64):
        for name, pure, reference, arguments in cases(np.random.default_rng(1), dtype, order=order):
            argnums = tuple(range(len(arguments)))

            def loss(function, argnums):
                return jax.grad(lambda *a: jnp.sum(jnp.sin(function(*a))), argnums=argnums)

            gradients = jax.jit(loss(pure, argnums))(*arguments)
            expected = loss(reference, argnums)(*arguments)
            if name.startswith("triangular"):
                # Only one triangle of the matrix is read, so only its gradient is defined.
                keep = jnp.tril if "lower=True" in name else jnp.triu
                gradients = (keep(gradients[0]), gradients[1])
                expected = (keep(expected[0]), expected[1])
            for gradient, reference_gradient in zip(gradients, expected, strict=True):
                assert relative_error(gradient, reference_gradient) < TOLERANCE[dtype], name


def test_forward_mode_cholesky_matches_lapack():
    matrix = positive_definite(np.random.default_rng(2), (), 5, np.float64)
    with jax.enable_x64(True):
        pure = jax.jacfwd(_linalg.cholesky)(matrix)
        reference = jax.jacfwd(jnp.linalg.cholesky)(matrix)
    assert relative_error(pure, reference) < TOLERANCE[np.float64]


@BOTH_ROUTES
def test_inverse_needs_row_swaps():
    # Zero diagonal entries: elimination without row swaps divides by zero at the first step.
    matrix = np.array([[0.0, 2.0, 1.0, 0.0], [1.0, 0.0, 3.0, 2.0], [4.0, 1.0, 0.0, 1.0],
                       [0.0, 3.0, 1.0, 0.0]])  # fmt: skip
    with jax.enable_x64(True):
        pure = _linalg.inv(jnp.asarray(matrix))
    # Exact references; the matrix has condition number ~40, so float64 round-off only.
    assert relative_error(pure, np.linalg.inv(matrix)) < TOLERANCE[np.float64]
    # A permutation is its own kind of worst case: every column pivots off the diagonal.
    permutation = np.eye(5)[[3, 0, 4, 1, 2]]
    assert np.array_equal(np.asarray(_linalg.inv(permutation)), permutation.T)  # exact: 0/1


@BOTH_ROUTES
def test_triangular_solve_ignores_other_triangle():
    rng = np.random.default_rng(5)
    lower = np.asarray(jnp.linalg.cholesky(positive_definite(rng, (3,), 5, np.float32)))
    rhs = rng.normal(size=(3, 5, 2)).astype(np.float32)
    garbage = lower + np.triu(np.full((5, 5), np.nan, np.float32), 1)
    # Same arithmetic on the same lower triangle: bitwise equal, NaN above it or not.
    assert np.array_equal(
        _linalg.solve_triangular(garbage, rhs), _linalg.solve_triangular(lower, rhs)
    )


@pytest.mark.parametrize(
    "lower, transpose", [(True, False), (True, True), (False, False), (False, True)]
)
def test_one_matrix_against_a_batch_of_right_hand_sides_is_one_folded_solve(lower, transpose):
    # A shared [m, m] factor against a minibatch of cells: the batch is folded into columns
    # instead of copying the matrix per cell; values and gradients as the broadcast solve.
    rng = np.random.default_rng(8)
    factor = np.asarray(jnp.linalg.cholesky(positive_definite(rng, (), 6, np.float32)))
    matrix = jnp.asarray(factor if lower else factor.T)[None]  # batch axis of size one
    rhs = jnp.asarray(rng.normal(size=(4, 3, 6, 2)).astype(np.float32))

    def loss(solver, m, b):
        return jnp.sum(jnp.sin(solver(m, b)))

    def ours(m, b):
        return _linalg.solve_triangular(m, b, lower=lower, transpose=transpose)

    def reference(m, b):
        full = jnp.broadcast_to(m, (4, 3, 6, 6))
        return jsl.solve_triangular(full, b, lower=lower, trans=1 if transpose else 0)

    assert ours(matrix, rhs).shape == rhs.shape
    values = [jax.value_and_grad(loss, argnums=(1, 2))(f, matrix, rhs) for f in (ours, reference)]
    # float32 solves of cond ~30, as TOLERANCE.
    assert relative_error(values[0][0], values[1][0]) < 1e-5
    for gradient, expected in zip(values[0][1], values[1][1], strict=True):
        assert relative_error(gradient, expected) < 1e-5


@BOTH_ROUTES
def test_cholesky_of_indefinite_matrix_is_nan():
    matrix = np.stack([np.eye(3), np.diag([1.0, -1.0, 1.0])]).astype(np.float32)
    factor = np.asarray(_linalg.cholesky(matrix))
    assert np.array_equal(factor[0], np.eye(3))  # exact: square roots of ones
    assert np.isnan(factor[1]).all()  # as jnp.linalg.cholesky


def test_multivariate_normal_matches_numpyro():
    rng = np.random.default_rng(3)
    scale = np.asarray(jnp.linalg.cholesky(positive_definite(rng, (7,), 6, np.float32)))
    loc = rng.normal(size=(7, 6)).astype(np.float32)
    value = rng.normal(size=(7, 6)).astype(np.float32)

    def log_density(law):
        return jax.value_and_grad(
            lambda v, s: jnp.sum(law(loc, scale_tril=s).log_prob(v)), argnums=(0, 1)
        )

    (pure, pure_grad), (ref, ref_grad) = (
        log_density(law)(value, scale)
        for law in (_gaussian.MultivariateNormal, dist.MultivariateNormal)
    )
    # float32 sums of ~40 terms of order 10: relative round-off ~1e-6.
    assert relative_error(pure, ref) < 1e-5
    for gradient, reference in zip(pure_grad, ref_grad, strict=True):
        assert relative_error(jnp.tril(gradient), jnp.tril(reference)) < 1e-5
    covariance = scale @ np.swapaxes(scale, -1, -2)
    law = _gaussian.MultivariateNormal(loc, covariance_matrix=covariance)
    assert relative_error(law.scale_tril, scale) < 1e-5  # float32 Cholesky of cond ~30
    # precision_matrix: inverse of cond ~30 matrices in float32.
    assert relative_error(law.precision_matrix, np.linalg.inv(covariance)) < 1e-5


def lapack_calls(function, *arguments):
    """The LAPACK custom calls of ``function``'s lowered program, one line each."""
    text = jax.jit(function).lower(*arguments).as_text()
    return [line for line in text.splitlines() if "custom_call @lapack" in line]


@BOTH_ROUTES
def test_no_batched_lapack_call_under_vmap_and_grad(route):
    # What keeps jaxlib 0.10 from hanging: the loops emit no LAPACK call, the sequential route
    # only calls on one matrix (num_batch_dims 0 runs inline, never on the thread pool), even
    # when vmap and grad are applied on top, at the blocked orders too.
    for order in ORDERS:
        for name, function, _, arguments in cases(
            np.random.default_rng(4), np.float32, order=order
        ):
            objective = jax.vmap(
                jax.grad(
                    lambda *a, f=function: jnp.sum(jnp.sin(f(*a))),
                    argnums=tuple(range(len(arguments))),
                )
            )
            calls = lapack_calls(objective, *arguments)
            if route == "loops":
                assert not calls, name
            else:
                assert calls, name
                assert all('num_batch_dims = "0"' in call for call in calls), name


def test_version_parsing():
    assert _linalg._version("0.10.2") == (0, 10, 2)
    assert _linalg._version("0.11.1rc2+cuda12") == (0, 11, 1)


HANGING_PATTERN = """
import jax, jax.numpy as jnp
from causalcell._core import linalg as _linalg

def loss(drift, covariance):
    # Two independent batched inverses and two batched Cholesky factors in one program: with
    # LAPACK on jaxlib 0.10 and a two-thread pool this hung within a few dozen calls.
    first = _linalg.inv(drift)
    second = _linalg.inv(jnp.swapaxes(drift, 1, 2) + 0.1)
    factor = _linalg.cholesky(covariance)
    other = _linalg.cholesky(covariance + 0.5 * jnp.eye(12))
    return jnp.sum(first**2) + jnp.sum(second) + jnp.sum(factor) + jnp.sum(other**2)

step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
keys = jax.random.split(jax.random.PRNGKey(0))
drift = -3.0 * jnp.eye(30) + 0.1 * jax.random.normal(keys[0], (17, 30, 30))
factor = jax.random.normal(keys[1], (512, 12, 12))
covariance = factor @ jnp.swapaxes(factor, 1, 2) + 12.0 * jnp.eye(12)
for index in range(40):
    value, _ = step(drift + 1e-4 * index, covariance)
    value.block_until_ready()
print("completed")
"""


@BOTH_ROUTES
def test_previously_hanging_pattern_completes(route):
    # A hang cannot fail an assertion, so the pattern runs in a child with a deadline (it takes
    # ~10 s on a loaded two-core machine; the deadline is generous against CI noise), on each
    # route whatever the installed jaxlib.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HANGING_PATTERN)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CAUSALCELL_LINALG": route},
    )
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout


def test_covariance_factor_is_a_lower_cholesky_factor_of_the_inverse_precision():
    rng = np.random.default_rng(5)
    root = rng.normal(size=(3, 6, 6))
    precision = root @ np.swapaxes(root, -1, -2) + 6.0 * np.eye(6)
    factor = np.asarray(_linalg.covariance_factor(jnp.asarray(precision, jnp.float32)))
    # Lower triangular with a positive diagonal, and T T^T = P^{-1} to float32 rounding of the
    # O(0.1) covariance entries (1e-6 relative, 1e-6 absolute).
    np.testing.assert_array_equal(factor, np.tril(factor))
    assert np.all(np.diagonal(factor, axis1=-2, axis2=-1) > 0)
    expected = np.linalg.inv(precision)
    np.testing.assert_allclose(factor @ np.swapaxes(factor, -1, -2), expected, atol=1e-6)
    # It is *the* Cholesky factor of the covariance (unique with a positive diagonal).
    np.testing.assert_allclose(factor, np.linalg.cholesky(expected), atol=1e-6)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.9.9", "lapack"), ("0.10.0", "sequential"), ("0.10.2", "sequential"),
     ("0.11.0", "sequential"), ("0.11.1", "lapack"), ("0.12.0rc1", "lapack")],
)  # fmt: skip
def test_affected_runtime_defaults_to_a_route_without_batched_calls(monkeypatch, version, expected):
    # jaxlib 0.10.0 up to 0.11.1 hangs in batched CPU LAPACK: one matrix at a time there (an
    # order-150 fit once hung at 0% CPU); any other runtime takes LAPACK's batched calls.
    monkeypatch.delenv("CAUSALCELL_LINALG", raising=False)
    monkeypatch.setattr(jaxlib.version, "__version__", version)
    assert _linalg._cpu_mode() == expected
    monkeypatch.setenv("CAUSALCELL_LINALG", "loops")  # a forced route wins over the version
    assert _linalg._cpu_mode() == "loops"


def test_unknown_route_is_named(monkeypatch):
    monkeypatch.setenv("CAUSALCELL_LINALG", "fast")
    with pytest.raises(ValueError, match=r"CAUSALCELL_LINALG=.fast.*sequential"):
        _linalg._cpu_mode()
