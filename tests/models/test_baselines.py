"""Tests of the pseudobulk baselines in causalcell.models.baselines."""

from __future__ import annotations

import numpy as np
import pytest

from causalcell.metrics import pseudobulk
from causalcell.models.baselines import (
    Additive,
    LinearIndicators,
    NoChange,
    shift_control_cells,
)


@pytest.fixture
def training():
    """Pseudobulk of control, singles A, B, C and the double A+B over 4 genes."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5, 4))
    return means, ["control", "A", "B", "C", "B+A"]


def test_names():
    assert (NoChange.name, Additive.name, LinearIndicators.name) == (
        "no_change",
        "additive",
        "linear",
    )


def test_no_change_predicts_the_control_mean(training):
    means, conditions = training
    prediction = NoChange.fit(means, conditions).predict(["A+B", "D", "control"])
    np.testing.assert_array_equal(prediction, np.tile(means[0], (3, 1)))


@pytest.mark.parametrize("baseline", [NoChange, Additive, LinearIndicators])
def test_fit_requires_the_control_condition(training, baseline):
    means, conditions = training
    with pytest.raises(ValueError, match=r"control condition 'control' is not among"):
        baseline.fit(means[1:], conditions[1:])
    with pytest.raises(ValueError, match="one condition label per row"):
        baseline.fit(means, conditions[:-1])


def test_fit_rejects_two_labels_for_the_same_targets(training):
    means, conditions = training
    with pytest.raises(ValueError, match=r"'B\+A' and 'A\+B' name the same set"):
        Additive.fit(np.vstack([means, means[-1]]), [*conditions, "A+B"])


def test_additive_double_is_exactly_sum_of_singles_minus_control(training):
    means, conditions = training
    control, single_a, single_b, single_c = means[:4]
    model = Additive.fit(means, conditions)
    prediction = model.predict(["A+B", "B+A", "A", "control", "A+B+C"])
    # Exact equality: the sum is formed as (y_A + y_B) - y_ctrl, nothing else is rounded.
    np.testing.assert_array_equal(prediction[0], single_a + single_b - control)
    np.testing.assert_array_equal(prediction[1], prediction[0])
    # Singles and control come back exactly as observed.
    np.testing.assert_array_equal(prediction[2], single_a)
    np.testing.assert_array_equal(prediction[3], control)
    # Triple: y_ctrl + three effects; rounding of a 3-term sum of O(1) numbers.
    expected_triple = control + (single_a - control) + (single_b - control) + (single_c - control)
    np.testing.assert_allclose(prediction[4], expected_triple, rtol=0, atol=1e-14)


def test_additive_ignores_the_observed_combination(training):
    means, conditions = training
    # The training mean of A+B (last row) is not returned: the baseline uses singles only.
    prediction = Additive.fit(means, conditions).predict(["A+B"])[0]
    np.testing.assert_array_equal(prediction, means[1] + means[2] - means[0])
    assert not np.array_equal(prediction, means[4])


def test_additive_member_without_single(training):
    means, conditions = training
    with pytest.raises(ValueError, match=r"\['D'\].*'A\+D'.*missing='control'"):
        Additive.fit(means, conditions).predict(["A+D"])
    lenient = Additive.fit(means, conditions, missing="control")
    np.testing.assert_array_equal(lenient.predict(["A+D", "D"]), means[[1, 0]])
    with pytest.raises(ValueError, match="missing must be"):
        Additive.fit(means, conditions, missing="zero")


def test_predict_takes_a_list_not_a_string(training):
    means, conditions = training
    with pytest.raises(TypeError, match=r"\['A'\]"):
        Additive.fit(means, conditions).predict("A")


def test_linear_with_singles_only_equals_additive():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(4, 6))
    conditions = ["control", "A", "B", "C"]
    queries = ["A", "A+B", "A+B+C", "C+B", "control"]
    additive = Additive.fit(means, conditions).predict(queries)
    linear = LinearIndicators.fit(means, conditions, ridge=0.0)
    # Identity Gram matrix: beta_g = y_g - y_ctrl up to rounding of O(1) differences.
    np.testing.assert_allclose(linear.predict(queries), additive, rtol=0, atol=1e-14)
    shrunk = LinearIndicators.fit(means, conditions, ridge=0.5)
    # beta = (y_g - y_ctrl) / (1 + ridge) exactly in exact arithmetic; float64 rounding only.
    np.testing.assert_allclose(shrunk.coefficients, (means[1:] - means[0]) / 1.5, atol=1e-14)


def test_linear_with_a_double_solves_the_least_squares_problem_by_hand():
    # Gene 0: effects dA = 1, dB = 2, dAB = 6 (synergy). Rows A, B, A+B give the Gram matrix
    # [[2, 1], [1, 2]] and right-hand side [dA + dAB, dB + dAB] = [7, 8], so
    # beta = [[2, -1], [-1, 2]] / 3 @ [7, 8] = [2, 3]. Gene 1 is additive: dA = 1, dB = 2,
    # dAB = 3 gives beta = [1, 2] and reproduces every training condition.
    control = np.array([10.0, -1.0])
    deltas = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [6.0, 3.0]])
    conditions = ["control", "A", "B", "A+B"]
    model = LinearIndicators.fit(control + deltas, conditions, ridge=0.0)
    assert model.targets == ("A", "B")
    # A 2x2 solve of integers: exact up to float64 rounding of O(10) numbers.
    np.testing.assert_allclose(model.coefficients, [[2.0, 1.0], [3.0, 2.0]], atol=1e-12)
    prediction = model.predict(["A+B", "A", "control"])
    np.testing.assert_allclose(
        prediction, control + np.array([[5.0, 3.0], [2.0, 1.0], [0.0, 0.0]]), atol=1e-12
    )
    additive = Additive.fit(control + deltas, conditions).predict(["A+B"])
    assert additive[0, 0] == control[0] + 3.0  # additive ignores the synergy, linear does not


def test_linear_targets_only_seen_together():
    control = np.zeros(1)
    means = np.array([control, [2.0]])
    with pytest.raises(ValueError, match="ridge > 0"):
        LinearIndicators.fit(means, ["control", "A+B"], ridge=0.0)
    model = LinearIndicators.fit(means, ["control", "A+B"], ridge=1e-3)
    # Gram [[1, 1], [1, 1]] + ridge I, right-hand side [2, 2]: beta_A = beta_B = 2 / (2 + ridge);
    # float64 rounding of a 2x2 solve.
    np.testing.assert_allclose(model.coefficients[:, 0], 2 / 2.001, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\['C'\]"):
        model.predict(["C"])
    np.testing.assert_array_equal(
        LinearIndicators.fit(means, ["control", "A+B"], missing="control").predict(["C"]), [[0.0]]
    )
    with pytest.raises(ValueError, match="ridge must be"):
        LinearIndicators.fit(means, ["control", "A+B"], ridge=-1.0)


def test_shift_control_cells():
    rng = np.random.default_rng(2)
    cells = rng.normal(size=(30, 3))
    control_mean = cells.mean(axis=0)
    predicted = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    shifted = shift_control_cells(cells, control_mean, predicted)
    assert shifted.shape == (2, 30, 3)
    # The shifted populations have the predicted means (float64 rounding of O(1) means).
    np.testing.assert_allclose(shifted.mean(axis=1), predicted, atol=1e-14)
    np.testing.assert_array_equal(
        shifted[1], shift_control_cells(cells, control_mean, predicted[1])
    )
    np.testing.assert_array_equal(shifted[0], cells + (predicted[0] - control_mean))
    with pytest.raises(ValueError, match=r"\(30, 3\).*\(2,\)"):
        shift_control_cells(cells, control_mean[:2], predicted)


def test_baselines_from_a_pseudobulk():
    rng = np.random.default_rng(3)
    labels = np.repeat(["control", "A", "B", "A+B"], 50)
    effects = {"control": 0.0, "A": 1.0, "B": -0.5, "A+B": 0.5}
    expression = rng.normal(size=(200, 5)) + np.array([effects[label] for label in labels])[:, None]
    bulk = pseudobulk(expression, labels)
    training = [index for index, condition in enumerate(bulk.conditions) if condition != "A+B"]
    conditions = [bulk.conditions[index] for index in training]
    for baseline in (NoChange, Additive, LinearIndicators):
        prediction = baseline.fit(bulk.means[training], conditions).predict(["A+B"])
        assert prediction.shape == (1, 5)
    control, delta_a, delta_b = (
        bulk.mean_of("control"),
        bulk.delta_of("A"),
        bulk.delta_of("B"),
    )
    no_change = NoChange.fit(bulk.means[training], conditions).predict(["A+B"])[0]
    np.testing.assert_array_equal(no_change, control)
    additive = Additive.fit(bulk.means[training], conditions).predict(["A+B"])[0]
    np.testing.assert_array_equal(
        additive, bulk.mean_of("A") + bulk.mean_of("B") - bulk.mean_of("control")
    )
    # Singles only: beta_g = delta_g / (1 + ridge) with the default ridge 1e-3 (see the class);
    # float64 rounding of a 2x2 solve on O(1) numbers.
    linear = LinearIndicators.fit(bulk.means[training], conditions).predict(["A+B"])[0]
    np.testing.assert_allclose(linear, control + (delta_a + delta_b) / 1.001, rtol=0, atol=1e-14)
