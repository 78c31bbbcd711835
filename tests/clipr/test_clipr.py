"""Tests of causalcell.clipr (DESIGN 4) against exact references, and of the CLIPR metrics."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd
import pytest

from causalcell.clipr import (
    DirectEffects,
    IllConditionedResponsesWarning,
    NotIdentifiedWarning,
    direct_effects,
    linear_responses,
    linearized_responses,
    posterior_direct_effects,
)
from causalcell.clipr._identify import _full_screen, _gene_by_gene
from causalcell.diffusion import (
    LinearDrift,
    NeuralDrift,
    UnstableDriftError,
    solve_continuous_lyapunov,
)
from causalcell.graph import graph_from_drift, to_adjacency
from causalcell.metrics import auprc, interval_coverage, orientation_accuracy, sign_accuracy

matplotlib.use("Agg")

GENES = ("a", "b", "c", "d", "e", "f")

# Exact float64 linear algebra on 6 x 6 matrices with condition numbers below ~50: the
# round-off of an inverse is ~cond * 1e-16 ~ 1e-14; 1e-11 leaves a wide margin and still fails
# for any algebra error (the smallest true effect is ~0.1).
EXACT = 1e-11

# (source, target) edges of the test drift: a DAG plus the two-cycle e <-> f.
EDGES = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e"), ("e", "f"), ("f", "e")]


def example_drift(seed: int = 0, edges=EDGES) -> np.ndarray:
    """Stable drift on ``GENES`` with random weights on ``edges`` (row = target)."""
    rng = np.random.default_rng(seed)
    index = {gene: position for position, gene in enumerate(GENES)}
    drift = np.zeros((len(GENES), len(GENES)))
    for source, target in edges:
        drift[index[target], index[source]] = rng.choice([-1, 1]) * rng.uniform(0.3, 0.9)
    # Strict row diagonal dominance: every Gershgorin disc lies in the left half-plane.
    decay = np.abs(drift).sum(axis=1) + rng.uniform(0.5, 1.5, len(GENES))
    return drift - np.diag(decay)


def true_effects(drift: np.ndarray) -> np.ndarray:
    effects = drift / -np.diag(drift)[:, None]
    np.fill_diagonal(effects, 0.0)
    return effects


def random_shifts(seed: int, size: int) -> np.ndarray:
    """Shift sizes of arbitrary sign and magnitudes spread over an order of magnitude."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size) * rng.uniform(0.2, 3.0, size)


def dense_drift(seed: int, size: int) -> np.ndarray:
    """Drift with every off-diagonal entry nonzero (a generic drift)."""
    rng = np.random.default_rng(seed)
    drift = rng.uniform(0.1, 0.5, (size, size)) * rng.choice([-1.0, 1.0], (size, size))
    np.fill_diagonal(drift, 0.0)
    return drift - np.diag(np.abs(drift).sum(axis=1) + 0.5)


def as_graph_orientation(drift_oriented: np.ndarray, genes=GENES) -> np.ndarray:
    return to_adjacency(graph_from_drift(drift_oriented, genes), genes, weight="weight")


# ------------------------------------------------------------------------------ full screens


def test_full_screen_recovers_direct_effects_for_arbitrary_shift_sizes():
    drift = example_drift()
    shifts = np.diag(random_shifts(1, len(GENES)))
    responses = -np.linalg.inv(drift) @ shifts
    # The identity behind CLIPR: R^{-1} = -D^{-1} A.
    np.testing.assert_allclose(np.linalg.inv(responses), -np.linalg.inv(shifts) @ drift, atol=EXACT)
    original = responses.copy()
    effects = direct_effects(responses, genes=GENES)
    np.testing.assert_array_equal(responses, original)  # inputs are never mutated
    np.testing.assert_allclose(effects.mean, true_effects(drift), atol=EXACT)
    np.testing.assert_array_equal(effects.identified, ~np.eye(len(GENES), dtype=bool))
    assert effects.genes == GENES and effects.targets == GENES
    # Same SVD-based definition as numpy: agree to round-off.
    assert effects.condition_number == pytest.approx(np.linalg.cond(responses), rel=1e-12)
    assert effects.regularization == 0.0 and effects.num_samples is None
    assert effects.lower is None and effects.probability_positive is None


def test_full_screen_inverse_formula_equals_gene_by_gene_regression():
    drift = example_drift(seed=3)
    responses = (-np.linalg.inv(drift) @ np.diag(random_shifts(4, len(GENES))))[None]
    inverse_based, *_ = _full_screen(responses, None, 1e8)
    regression, identified, _, _ = _gene_by_gene(responses, np.arange(len(GENES)), None, 1e8)
    assert identified.sum() == len(GENES) * (len(GENES) - 1)
    np.testing.assert_allclose(regression, inverse_based, atol=EXACT)


def test_dataframe_with_shuffled_columns_gives_the_same_answer():
    drift = example_drift()
    responses = -np.linalg.inv(drift) @ np.diag(random_shifts(2, len(GENES)))
    order = np.random.default_rng(5).permutation(len(GENES))
    frame = pd.DataFrame(responses[:, order], index=list(GENES), columns=[GENES[p] for p in order])
    from_frame = direct_effects(frame)
    from_array = direct_effects(responses, genes=GENES)
    np.testing.assert_allclose(from_frame.mean, from_array.mean, atol=EXACT)
    assert from_frame.targets == tuple(GENES[p] for p in order)
    by_index = direct_effects(responses[:, order], genes=GENES, targets=order.tolist())
    np.testing.assert_allclose(by_index.mean, from_array.mean, atol=EXACT)
    np.testing.assert_array_equal(frame.to_numpy(), responses[:, order])  # frame untouched


def test_ill_conditioned_responses_warn_regularise_and_report_the_condition_number():
    drift = example_drift()
    responses = -np.linalg.inv(drift)
    responses[:, 1] = responses[:, 0] + 1e-10 * responses[:, 1]  # two near-identical columns
    condition = np.linalg.cond(responses)
    assert condition > 1e9
    with pytest.warns(IllConditionedResponsesWarning, match=re.escape(f"{condition:.3g}")):
        effects = direct_effects(responses, genes=GENES)
    # Both are SVD ratios of the same matrix; this one is ~1e10, so 1e-6 relative round-off.
    assert effects.condition_number == pytest.approx(condition, rel=1e-6)
    strength = 1e-6 * np.linalg.norm(responses, 2) ** 2
    assert effects.regularization == pytest.approx(strength, rel=1e-12)  # same formula
    regularised = responses.T @ np.linalg.inv(responses @ responses.T + strength * np.eye(6))
    reference = -regularised / np.diag(regularised)[:, None]
    np.fill_diagonal(reference, 0.0)
    # Two float64 routes to one well-posed (regularised) problem: round-off only.
    np.testing.assert_allclose(effects.mean, reference, rtol=1e-8, atol=1e-10)
    # An explicit regularization is a decision, not an accident: no warning (they are errors).
    direct_effects(responses, regularization=strength)


# --------------------------------------------------------------------------- partial screens


def test_partial_screen_identifies_only_the_unperturbed_genes_row():
    size = len(GENES)
    drift = dense_drift(seed=6, size=size)
    missing = 3  # gene d is not perturbed
    targets = [gene for gene in range(size) if gene != missing]
    responses = linear_responses(drift, targets) * random_shifts(7, size - 1)
    effects = direct_effects(responses, genes=GENES, targets=targets)
    expected = np.zeros((size, size), dtype=bool)
    expected[missing] = True
    expected[missing, missing] = False
    np.testing.assert_array_equal(effects.identified, expected)
    np.testing.assert_allclose(effects.mean[missing], true_effects(drift)[missing], atol=EXACT)
    unidentified = ~expected & ~np.eye(size, dtype=bool)
    assert np.isnan(effects.mean[unidentified]).all()
    # The rows of the pseudo-inverse of R_S are *not* rows of -D^{-1} A: for every perturbed
    # gene they miss the truth by far more than round-off, whatever the regularization.
    pseudo_inverse = np.linalg.pinv(responses)
    for row, gene in enumerate(targets):
        naive = -pseudo_inverse[row] / pseudo_inverse[row, gene]
        off_diagonal = np.arange(size) != gene
        error = np.abs(naive - true_effects(drift)[gene])[off_diagonal].max()
        assert error > 1e-3
    table = effects.table()
    assert table["identified"].sum() == size - 1
    assert (table.loc[table["identified"], "target"] == "d").all()
    assert table.loc[~table["identified"], "mean"].isna().all()
    assert table["mean"].notna().sum() == size - 1  # nothing filled
    graph = effects.to_networkx(threshold=0.0)
    assert set(graph.nodes) == set(GENES)
    assert {target for _, target in graph.edges} == {"d"} and graph.number_of_edges() == size - 1
    scores = effects.adjacency_scores()  # graph orientation: column = target
    not_into_missing = ~np.eye(size, dtype=bool)
    not_into_missing[:, missing] = False
    assert np.isnan(scores[not_into_missing]).all()
    np.testing.assert_allclose(scores[:, missing], np.abs(true_effects(drift)[missing]), atol=EXACT)


def test_partial_screen_estimates_converge_to_the_truth_as_regularization_vanishes():
    size = len(GENES)
    drift = dense_drift(seed=8, size=size)
    targets = [0, 1, 2, 3, 4]
    responses = linear_responses(drift, targets) * random_shifts(9, size - 1)
    scale = np.linalg.norm(responses, 2) ** 2
    system, observed = responses[:5], responses[5]  # gene f's regression (no column targets it)
    errors = []
    for relative in (1e-2, 1e-4, 1e-6, 1e-8, 0.0):
        strength = relative * scale
        effects = direct_effects(responses, genes=GENES, targets=targets, regularization=strength)
        # The Tikhonov solution of the Notes, (L L^T + lambda I)^{-1} L r, by a direct solve:
        # two float64 routes (SVD and LU) to one well-conditioned 5 x 5 system: round-off only.
        reference = np.linalg.solve(system @ system.T + strength * np.eye(5), system @ observed)
        np.testing.assert_allclose(effects.mean[5, :5], reference, rtol=1e-8, atol=1e-10)
        errors.append(np.abs(effects.mean[5] - true_effects(drift)[5]).max())
    # The Tikhonov bias is linear in lambda for small lambda: each 100-fold smaller lambda
    # divides it by ~100 (50 to 200 allows the O(lambda^2) term at the largest lambda) ...
    ratios = np.array(errors[:3]) / np.array(errors[1:4])
    assert ((ratios > 50) & (ratios < 200)).all(), ratios
    assert errors[3] > 1e-9  # ... so it is still visible at 1e-8 relative strength,
    assert errors[4] < EXACT  # and at lambda = 0 the identified row is exact.


def test_ill_conditioned_partial_screen_warns_and_uses_the_default_tikhonov_strength():
    drift = dense_drift(seed=8, size=len(GENES))
    targets = [0, 1, 2, 3, 4]
    responses = linear_responses(drift, targets)
    responses[:, 1] = responses[:, 0] + 1e-10 * responses[:, 1]  # two near-identical columns
    system, observed = responses[:5], responses[5]  # gene f's regression: the only one solved
    condition = np.linalg.cond(system)
    assert condition > 1e9
    with pytest.warns(IllConditionedResponsesWarning, match="a gene's regression on the others"):
        effects = direct_effects(responses, genes=GENES, targets=targets)
    # SVD ratios of the same ~1e10-conditioned matrix: 1e-6 relative round-off.
    assert effects.condition_number == pytest.approx(condition, rel=1e-6)
    strength = 1e-6 * np.linalg.norm(responses, 2) ** 2
    assert effects.regularization == pytest.approx(strength, rel=1e-12)  # same formula
    reference = np.linalg.solve(system @ system.T + strength * np.eye(5), system @ observed)
    # Two float64 routes to one regularised problem (the Tikhonov solution of the Notes).
    np.testing.assert_allclose(effects.mean[5, :5], reference, rtol=1e-8, atol=1e-10)


def test_structural_identification_of_a_single_effect_in_a_sparse_drift():
    # Chain g0 -> g1 -> g2, only g1 perturbed: its response outside row g2 is e_g1 alone (g0 is
    # upstream), so W[g2, g1] is identified although no row is generically identified.
    drift = np.array([[-1.0, 0.0, 0.0], [0.7, -1.3, 0.0], [0.0, -0.4, -2.0]])
    responses = linear_responses(drift, [1]) * 2.5
    effects = direct_effects(responses, targets=["g1"])
    expected = np.zeros((3, 3), dtype=bool)
    expected[2, 1] = True
    np.testing.assert_array_equal(effects.identified, expected)
    assert effects.mean[2, 1] == pytest.approx(-0.4 / 2.0, abs=EXACT)


def test_partial_screen_with_too_few_perturbations_warns_and_identifies_nothing():
    drift = dense_drift(seed=10, size=5)
    with pytest.warns(NotIdentifiedWarning, match="d - 1 = 4 perturbations"):
        effects = direct_effects(linear_responses(drift, [0, 1, 2]), targets=[0, 1, 2])
    assert not effects.identified.any()
    off_diagonal = ~np.eye(5, dtype=bool)
    assert np.isnan(effects.mean[off_diagonal]).all() and np.isnan(effects.condition_number)
    assert effects.to_networkx().number_of_edges() == 0
    assert effects.table()["mean"].isna().all()


# -------------------------------------------------------------------------------- posterior


def test_posterior_summaries_match_a_loop_over_draws_and_cover_the_truth():
    drift = example_drift()
    responses = -np.linalg.inv(drift) @ np.diag(random_shifts(11, len(GENES)))
    rng = np.random.default_rng(12)
    noise_scale = 1e-3 * np.abs(responses).max()
    draws = responses + noise_scale * rng.normal(size=(400, *responses.shape))
    posterior = posterior_direct_effects(draws, genes=GENES, probability=0.9)
    loop = np.stack([direct_effects(draw, genes=GENES).mean for draw in draws])
    # Batched vs one-at-a-time float64 inverses of the same matrices: round-off only.
    np.testing.assert_allclose(posterior.draws, loop, atol=EXACT)
    np.testing.assert_allclose(posterior.mean, loop.mean(axis=0), atol=EXACT)
    np.testing.assert_allclose(posterior.lower, np.quantile(loop, 0.05, axis=0), atol=EXACT)
    np.testing.assert_allclose(posterior.upper, np.quantile(loop, 0.95, axis=0), atol=EXACT)
    np.testing.assert_allclose(posterior.sd, loop.std(axis=0, ddof=1), atol=EXACT)
    np.testing.assert_array_equal(posterior.probability_positive, (posterior.draws > 0).mean(0))
    assert ((posterior.probability_positive >= 0) & (posterior.probability_positive <= 1)).all()
    # Sign probability max(P(W > 0), P(W < 0)), in graph orientation [source, target]; 0 on the
    # diagonal (exact: the same counts of the same draws).
    sign_probability = np.maximum((posterior.draws > 0).mean(0), (posterior.draws < 0).mean(0))
    np.fill_diagonal(sign_probability, 0.0)
    np.testing.assert_array_equal(posterior.adjacency_scores(), sign_probability.T)
    truth = true_effects(drift)
    off_diagonal = ~np.eye(len(GENES), dtype=bool)
    # 400 draws: the mean's standard error is sd / 20, so 5 standard errors is sd / 4; the
    # nonlinearity of W(R) adds a bias O(noise^2), negligible at relative noise 1e-3.
    assert (np.abs(posterior.mean - truth) <= posterior.sd / 4)[off_diagonal].all()
    assert (
        interval_coverage(
            truth[off_diagonal],
            *(bound[off_diagonal] for bound in (posterior.lower, posterior.upper)),
        )
        == 1.0
    )
    assert posterior.condition_number.shape == (400,) and posterior.num_samples == 400
    table = posterior.table()
    assert list(table.columns) == [
        "source",
        "target",
        "mean",
        "sd",
        "lower",
        "upper",
        "probability_positive",
        "identified",
    ]
    first = table.iloc[0]
    target, source = GENES.index(first["target"]), GENES.index(first["source"])
    assert first["mean"] == posterior.mean[target, source]
    assert np.abs(first["mean"]) == np.nanmax(np.abs(posterior.mean))
    assert (np.diff(np.abs(table["mean"].to_numpy())) <= 0).all()
    result = posterior.to_causal_result()
    np.testing.assert_array_equal(result.mean("direct_effect"), posterior.draws.mean(axis=0))
    assert result.coords["target"] == GENES


def test_graph_keeps_effects_whose_interval_excludes_zero_with_their_attributes():
    drift = example_drift()
    responses = -np.linalg.inv(drift)
    rng = np.random.default_rng(13)
    draws = responses + 1e-3 * rng.normal(size=(200, *responses.shape))
    posterior = posterior_direct_effects(draws, genes=GENES)
    graph = posterior.to_networkx()
    # Every true effect is far from 0 relative to the noise; every absent one is 0 in truth and
    # the draws are centred on the truth, so its interval contains 0.
    excludes_zero = (posterior.lower > 0) | (posterior.upper < 0)
    np.fill_diagonal(excludes_zero, False)
    expected = {
        (GENES[source], GENES[target]) for target, source in zip(*np.nonzero(excludes_zero))
    }
    assert set(graph.edges) == expected
    assert expected == set(EDGES)
    for source, target, attributes in graph.edges(data=True):
        row, column = GENES.index(target), GENES.index(source)
        assert attributes == {
            "weight": posterior.mean[row, column],
            "lower": posterior.lower[row, column],
            "upper": posterior.upper[row, column],
            "probability_positive": posterior.probability_positive[row, column],
        }


# -------------------------------------------------------------------------------- orientation


def test_symmetric_responses_lose_orientation_while_true_responses_keep_it():
    dag_edges = [edge for edge in EDGES if edge != ("f", "e")]
    drift = example_drift(seed=14, edges=dag_edges)
    adjacency = (as_graph_orientation(drift) != 0).astype(int)
    with jax.enable_x64(True):
        covariance = np.asarray(solve_continuous_lyapunov(jnp.asarray(drift), jnp.eye(6) * 0.5))
    covariance = (covariance + covariance.T) / 2  # exact symmetry for the argument below
    true_responses = linear_responses(drift, range(len(GENES)))

    point = direct_effects(true_responses, genes=GENES)
    assert orientation_accuracy(adjacency, point.adjacency_scores()) == 1.0
    assert auprc(adjacency, point.adjacency_scores()) == 1.0
    graph_weights = as_graph_orientation(true_effects(drift))
    assert sign_accuracy(graph_weights, as_graph_orientation(point.mean)) == 1.0
    # A gradient-field drift gives responses proportional to the covariance: CLIPR then
    # returns W_ij = -P_ij / P_ii with P = Sigma^{-1} symmetric, so signs are symmetric.
    symmetric = direct_effects(covariance, genes=GENES)
    np.testing.assert_array_equal(np.sign(symmetric.mean), np.sign(symmetric.mean.T))

    rng = np.random.default_rng(15)
    noise = 1e-3 * rng.normal(size=(300, 6, 6))
    symmetric_draws = covariance + (noise + np.swapaxes(noise, 1, 2)) / 2
    symmetric_posterior = posterior_direct_effects(symmetric_draws, genes=GENES)
    true_posterior = posterior_direct_effects(true_responses + noise, genes=GENES)
    symmetric_scores = symmetric_posterior.adjacency_scores("sign_probability")
    np.testing.assert_array_equal(symmetric_scores, symmetric_scores.T)
    assert orientation_accuracy(adjacency, symmetric_scores) == 0.5
    assert orientation_accuracy(adjacency, true_posterior.adjacency_scores()) == 1.0


# ------------------------------------------------------------------ responses from a drift


def test_linear_responses_batch_and_errors():
    drifts = np.stack([example_drift(seed) for seed in range(3)])
    targets = [4, 0]
    batch = linear_responses(drifts, targets)
    for drift, responses in zip(drifts, batch):
        np.testing.assert_allclose(responses, -np.linalg.inv(drift)[:, targets], atol=EXACT)
    with pytest.raises(UnstableDriftError, match="not stable"):
        linear_responses(np.array([[0.5, 0.0], [0.0, -1.0]]), [0])
    with pytest.raises(ValueError, match="distinct"):
        linear_responses(drifts[0], [1, 1])
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        linear_responses(drifts[0], [6])
    with pytest.raises(ValueError, match="integer gene indices"):
        linear_responses(drifts[0], ["a"])


def test_linearized_responses_of_a_linear_drift_equal_the_exact_ones():
    drift = LinearDrift.from_matrix(jnp.asarray(example_drift(), jnp.float32), jnp.ones(6))
    reference = jnp.linspace(-1.0, 1.0, 6)
    targets = [0, 2, 5]
    np.testing.assert_array_equal(
        linearized_responses(drift, reference, targets),
        linear_responses(np.asarray(drift.matrix()), targets),
    )


def small_neural_drift(seed: int = 16) -> NeuralDrift:
    rng = np.random.default_rng(seed)
    size, num_parents, hidden = 3, 2, 4
    return NeuralDrift(
        log_decay=jnp.log(jnp.array([1.0, 1.5, 2.0])),
        bias=jnp.array([0.3, -0.2, 0.1]),
        center=jnp.zeros(size),
        parents=jnp.array([[1, 2], [0, 2], [0, 1]]),
        parent_mask=jnp.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]),  # 0 -> 1, {0, 1} -> 2
        input_weights=jnp.asarray(rng.normal(0.0, 0.8, (size, num_parents, hidden))),
        hidden_bias=jnp.asarray(rng.normal(0.0, 0.3, (size, hidden))),
        output_weights=jnp.asarray(rng.normal(0.0, 0.5, (size, hidden))),
    )


def test_linearized_responses_match_finite_in_silico_shifts_of_a_neural_drift():
    with jax.enable_x64(True):
        drift = small_neural_drift()
        jacobian = jax.jacfwd(drift)

        def fixed_point(shift: np.ndarray) -> np.ndarray:
            """Solve f(x) + shift = 0 by Newton's method (quadratic convergence)."""
            state = np.zeros(3)
            for _ in range(30):
                residual = np.asarray(drift(jnp.asarray(state))) + shift
                state = state - np.linalg.solve(np.asarray(jacobian(jnp.asarray(state))), residual)
            # float64 round-off of an O(1) residual.
            assert np.abs(np.asarray(drift(jnp.asarray(state))) + shift).max() < 1e-14
            return state

        steady = fixed_point(np.zeros(3))
        targets = [0, 1, 2]
        responses = linearized_responses(drift, jnp.asarray(steady), targets)
        step = 1e-4
        finite = np.stack(
            [
                (fixed_point(step * np.eye(3)[gene]) - fixed_point(-step * np.eye(3)[gene]))
                / (2 * step)
                for gene in targets
            ],
            axis=1,
        )
        linearised = linear_responses(
            np.asarray(drift.linearize(jnp.asarray(steady)).matrix()), targets
        )
    # Central differences: truncation O(step^2) ~ 1e-8 times third derivatives of order 1, plus
    # root-finding error 1e-14 / step ~ 1e-10; 1e-6 leaves a margin of 100.
    np.testing.assert_allclose(responses, finite, atol=1e-6)
    np.testing.assert_allclose(responses, linearised, atol=EXACT)  # same Jacobian, float64
    # Gene 1 does not regulate gene 0, so a shift on 1 leaves gene 0 exactly still.
    assert responses[0, 1] == 0.0


# --------------------------------------------------------------------------- outputs


def test_table_lists_every_ordered_pair_with_exact_values():
    drift = np.array([[-1.0, 0.0, 0.0], [0.8, -2.0, 0.0], [0.0, -0.5, -1.0]])
    effects = direct_effects(linear_responses(drift, [0, 1, 2]), genes=["x", "y", "z"])
    table = effects.table()
    assert len(table) == 6
    assert list(table.columns) == [
        "source",
        "target",
        "mean",
        "lower",
        "upper",
        "probability_positive",
        "identified",
    ]
    assert table[["source", "target"]].iloc[:2].values.tolist() == [["y", "z"], ["x", "y"]]
    # 0.5 / 1 and 0.8 / 2: exact in float64 up to the inverse's round-off.
    np.testing.assert_allclose(table["mean"].iloc[:2], [-0.5, 0.4], atol=EXACT)
    np.testing.assert_allclose(table["mean"].iloc[2:], 0.0, atol=EXACT)
    assert table["lower"].isna().all() and table["identified"].all()
    assert "DirectEffects(3 genes, 3 perturbed, 6 of 6 effects identified" in repr(effects)


def test_plot_greys_unidentified_cells_and_marks_intervals_excluding_zero():
    import matplotlib.pyplot as plt

    size = len(GENES)
    drift = dense_drift(seed=17, size=size)
    targets = [0, 1, 2, 3, 4]
    rng = np.random.default_rng(18)
    base = linear_responses(drift, targets)
    posterior = posterior_direct_effects(
        base + 1e-4 * rng.normal(size=(50, *base.shape)), genes=GENES, targets=targets
    )
    axes = posterior.plot()
    image = axes.get_images()[0].get_array()
    unidentified = ~posterior.identified & ~np.eye(size, dtype=bool)
    np.testing.assert_array_equal(image.mask, ~posterior.identified)
    np.testing.assert_array_equal(
        image.data[posterior.identified], posterior.mean[posterior.identified]
    )
    hatched = [patch for patch in axes.patches if patch.get_hatch()]
    assert len(hatched) == unidentified.sum() == size * (size - 1) - (size - 1)
    excludes_zero = posterior.identified & ((posterior.lower > 0) | (posterior.upper < 0))
    (dots,) = axes.collections
    assert len(dots.get_offsets()) == excludes_zero.sum() > 0
    plt.close(axes.figure)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"responses": np.ones(3)}, r"2-D array \[genes, perturbations\]"),
        ({"responses": np.ones((3, 4))}, "4 perturbation columns but only 3 genes"),
        ({"responses": np.ones((3, 2))}, "pass targets="),
        ({"responses": np.ones((3, 2)), "targets": ["g0"]}, "targets has 1 entries"),
        ({"responses": np.ones((3, 2)), "targets": ["g0", "g0"]}, r"\['g0'\] are perturbed by"),
        ({"responses": np.ones((3, 2)), "targets": ["g0", 0]}, "more than one column"),
        ({"responses": np.ones((3, 2)), "targets": ["g0", "gg1"]}, "Did you mean 'g1'"),
        ({"responses": np.ones((3, 2)), "targets": ["g0", 7]}, r"row index in \[0, 3\)"),
        ({"responses": np.ones((3, 3)), "genes": ["a", "b"]}, "genes has 2 names"),
        ({"responses": np.ones((3, 3)), "genes": ["a", "b", "a"]}, "duplicated: \\['a'\\]"),
        ({"responses": np.array([[1.0, np.nan], [0.0, 1.0]])}, r"1 NaN or infinite .*\(0, 1\)"),
        ({"responses": np.zeros((2, 2))}, "all zeros"),
        ({"responses": np.eye(2), "regularization": -1.0}, "Tikhonov strength >= 0"),
        ({"responses": np.eye(2), "rcond_warning": 0.5}, "threshold >= 1"),
        ({"responses": np.ones((1, 1))}, "at least two"),
        ({"responses": pd.DataFrame(np.eye(2)), "genes": ["a", "b"]}, "names its genes"),
        ({"responses": [["x", 1.0], [0.0, 1.0]]}, "numeric array"),
    ],
)
def test_bad_inputs_raise_clear_errors(arguments, match):
    responses = arguments.pop("responses")
    with pytest.raises(ValueError, match=match):
        direct_effects(responses, **arguments)


def test_posterior_input_errors_and_result_misuse():
    with pytest.raises(ValueError, match=r"3-D array \[draws, genes, perturbations\]"):
        posterior_direct_effects(np.eye(2))
    with pytest.raises(ValueError, match=r"probability must lie in \(0, 1\)"):
        posterior_direct_effects(np.eye(2)[None], probability=1.0)
    point = direct_effects(np.eye(2))
    with pytest.raises(ValueError, match="needs posterior draws"):
        point.adjacency_scores("sign_probability")
    with pytest.raises(ValueError, match="no draws"):
        point.to_causal_result()
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        point.to_networkx(threshold=-1.0)
    with pytest.raises(ValueError, match="exactly one of mean"):
        DirectEffects(
            genes=["a"], targets=["a"], identified=[[False]], condition_number=1, regularization=0
        )


# --------------------------------------------------------------------------- metrics


def test_sign_accuracy_hand_cases():
    true = np.array([[0.0, 0.8, -0.5], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]])
    assert sign_accuracy(true, true) == 1.0
    assert sign_accuracy(true, -true) == 0.0
    assert sign_accuracy(true, np.zeros((3, 3))) == 0.0  # 0 has no sign
    estimate = np.array([[9.0, 0.1, -2.0], [-5.0, 0.0, np.nan], [1.0, 1.0, 0.0]])
    assert sign_accuracy(true, estimate) == 1.0  # diagonal, non-edges and NaN are left out
    assert np.isnan(sign_accuracy(np.eye(3), np.eye(3)))  # no off-diagonal edge
    with pytest.raises(ValueError, match="shape"):
        sign_accuracy(true, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        sign_accuracy(np.full((2, 2), np.nan), np.zeros((2, 2)))


def test_orientation_accuracy_hand_cases_and_symmetric_scores_are_chance():
    true = np.array([[0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]])  # 1 <-> 3
    one_way = [(0, 1), (0, 2), (1, 2)]
    scores = np.zeros((4, 4))
    for source, target in one_way:
        scores[source, target] = 1.0
    assert orientation_accuracy(true, scores) == 1.0
    assert orientation_accuracy(true, scores.T) == 0.0
    scores[2, 1] = 1.0  # a tie on 1 -> 2
    assert orientation_accuracy(true, scores) == pytest.approx(2.5 / 3, abs=1e-15)  # 2.5 of 3
    symmetric = np.random.default_rng(19).uniform(size=(4, 4))
    assert orientation_accuracy(true, symmetric + symmetric.T) == 0.5
    assert np.isnan(orientation_accuracy(np.zeros((3, 3), dtype=int), np.ones((3, 3))))
    with pytest.raises(ValueError, match="fill not-identified"):
        orientation_accuracy(true, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="only 0 and 1"):
        orientation_accuracy(np.full((2, 2), 0.5), np.ones((2, 2)))
