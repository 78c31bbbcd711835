"""Tests of CausalResult: summaries against numpy and closed forms, ArviZ round trip, selection."""

import copy
import math
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from causalcell._core import arviz_adapter as _arviz
from causalcell.results import SUMMARY_STATISTICS, CausalResult

WORLDS = ["factual", "counterfactual"]
GENES = ["GATA1", "CEBPA", "SPI1"]


def _draws(num_samples=400, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "expression": rng.normal(loc=[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], size=(num_samples, 2, 3)),
        "sigma": rng.gamma(2.0, size=num_samples),
    }


def _result(**keywords):
    return CausalResult(
        _draws(**keywords),
        dims={"expression": ("world", "gene")},
        coords={"world": WORLDS, "gene": GENES},
        attrs={"query": "counterfactual"},
    )


def test_access_and_default_dims():
    draws = _draws()
    result = CausalResult(draws)
    assert result.names == ("expression", "sigma") and list(result) == ["expression", "sigma"]
    assert len(result) == 2 and "sigma" in result and "counts" not in result
    assert result.num_samples == 400
    assert result.dims == {"expression": ("expression_dim_0", "expression_dim_1"), "sigma": ()}
    assert result.coords == {"expression_dim_0": (0, 1), "expression_dim_1": (0, 1, 2)}
    np.testing.assert_array_equal(result["expression"], draws["expression"])
    with pytest.raises(KeyError, match=r"'counts'.*expression"):
        result["counts"]


def test_repr_names_shapes_and_dims():
    text = repr(_result())
    assert text.splitlines()[0] == "CausalResult(400 samples)"
    assert "expression  (world: 2, gene: 3)" in text and "sigma       ()" in text


def test_mean_std_quantile_match_numpy():
    draws, result = _draws(), _result()
    means, deviations = result.mean(), result.std()
    for name, values in draws.items():
        np.testing.assert_allclose(means[name], values.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(deviations[name], values.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(result.mean("sigma"), draws["sigma"].mean(), rtol=1e-12)
    levels = [0.05, 0.5, 0.95]
    quantiles = result.quantile(levels, "expression")
    assert quantiles.shape == (3, 2, 3)
    np.testing.assert_allclose(quantiles, np.quantile(draws["expression"], levels, axis=0))
    np.testing.assert_allclose(result.quantile(0.5)["sigma"], np.median(draws["sigma"]))


def test_hdi_of_a_large_normal_sample_matches_the_closed_form():
    number, location, scale, prob = 100_000, 2.0, 3.0, 0.9
    draws = np.random.default_rng(1).normal(location, scale, size=(number, 2))
    lower, upper = CausalResult({"effect": draws}).hdi(prob, "effect")
    # The HDI of a normal distribution is its central interval, location ± z * scale.
    z = scipy.stats.norm.ppf((1 + prob) / 2)
    density = scipy.stats.norm.pdf(z) / scale  # at either end of that interval
    # Width: the empirical content of a fixed window has variance prob (1 - prob) / number,
    # and widening it by w adds density * w, so the width's standard error is as below.
    width_error = math.sqrt(prob * (1 - prob) / number) / density
    # Centre: shifting the window by d costs z d² / scale of width and adds width noise of
    # variance 2 |d| / (density * number), a Brownian motion; the argmin of c d² + sigma B(d)
    # is (sigma / c)^(2/3) times Chernoff's distribution, whose standard deviation is 0.52
    # (about 0.065 here, as 400 simulated replicates confirm; they also put the width's
    # standard error at 0.028 and its bias at -0.01).
    sigma, curvature = math.sqrt(2 / (density * number)), z / scale
    centre_error = 0.52 * (sigma / curvature) ** (2 / 3)
    np.testing.assert_allclose(upper - lower, 2 * z * scale, atol=5 * width_error)
    np.testing.assert_allclose((upper + lower) / 2, location, atol=5 * centre_error)


def test_hdi_is_the_adapters_for_every_quantity():
    draws, result = _draws(), _result()
    intervals = result.hdi(0.8)
    assert set(intervals) == set(draws)
    for name, values in draws.items():
        expected = _arviz.hdi(values, 0.8, axis=0)
        np.testing.assert_array_equal(intervals[name][0], expected[0])
        np.testing.assert_array_equal(intervals[name][1], expected[1])
        assert np.all(intervals[name][0] < intervals[name][1])


@pytest.mark.parametrize("prob", [0.0, 1.0, 1.5, -0.2, float("nan")])
def test_hdi_rejects_probabilities_outside_the_unit_interval(prob):
    with pytest.raises(ValueError, match=r"prob must lie in \(0, 1\)"):
        _result().hdi(prob)


def test_summary_has_one_labelled_row_per_element():
    draws, result = _draws(), _result()
    summary = result.summary(prob=0.8)
    assert list(summary.columns) == ["quantity", "world", "gene", *SUMMARY_STATISTICS]
    assert list(SUMMARY_STATISTICS) == ["mean", "sd", "hdi_lower", "hdi_upper"]
    assert summary.attrs["hdi_prob"] == 0.8
    assert len(summary) == 2 * 3 + 1
    expression = summary[summary["quantity"] == "expression"]
    assert list(expression["world"]) == ["factual"] * 3 + ["counterfactual"] * 3
    assert list(expression["gene"]) == GENES * 2
    row = expression[(expression["world"] == "counterfactual") & (expression["gene"] == "CEBPA")]
    values = draws["expression"][:, 1, 1]
    lower, upper = _arviz.hdi(values, 0.8)
    expected = [values.mean(), values.std(ddof=1), lower, upper]
    np.testing.assert_allclose(row[list(SUMMARY_STATISTICS)].to_numpy()[0], expected, rtol=1e-12)
    sigma = summary[summary["quantity"] == "sigma"].iloc[0]
    assert pd.isna(sigma["world"]) and pd.isna(sigma["gene"])
    np.testing.assert_allclose(sigma["mean"], draws["sigma"].mean(), rtol=1e-12)


def test_to_dataframe_is_every_draw_in_long_format():
    draws, result = _draws(num_samples=5), _result(num_samples=5)
    frame = result.to_dataframe()
    assert list(frame.columns) == ["quantity", "sample", "world", "gene", "value"]
    assert len(frame) == 5 * 6 + 5
    row = frame[
        (frame["quantity"] == "expression")
        & (frame["sample"] == 3)
        & (frame["world"] == "counterfactual")
        & (frame["gene"] == "SPI1")
    ]
    assert row["value"].tolist() == [draws["expression"][3, 1, 2]]
    sigma = frame[frame["quantity"] == "sigma"]
    np.testing.assert_array_equal(sigma["value"], draws["sigma"])
    assert sigma["sample"].tolist() == list(range(5))


def test_to_arviz_round_trips_values_coordinates_and_dimensions():
    draws, result = _draws(), _result()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        posterior = _arviz.get_group(result.to_arviz(), "posterior")
    assert set(posterior.data_vars) == {"expression", "sigma"}
    for name, values in draws.items():
        np.testing.assert_array_equal(posterior[name].values, values[None])
    assert posterior["expression"].dims == ("chain", "draw", "world", "gene")
    assert posterior["sigma"].dims == ("chain", "draw")
    assert list(posterior["world"].values) == WORLDS
    assert list(posterior["gene"].values) == GENES


def test_sel_picks_the_labelled_slice():
    draws, result = _draws(), _result()
    counterfactual = result.sel(world="counterfactual")
    np.testing.assert_array_equal(counterfactual["expression"], draws["expression"][:, 1])
    np.testing.assert_array_equal(counterfactual["sigma"], draws["sigma"])  # no world axis
    assert counterfactual.dims == {"expression": ("gene",), "sigma": ()}
    assert counterfactual.coords == {"gene": tuple(GENES)}
    assert counterfactual.attrs == {"query": "counterfactual"}
    both = result.sel(world="factual", gene="SPI1")
    np.testing.assert_array_equal(both["expression"], draws["expression"][:, 0, 2])
    np.testing.assert_allclose(both.mean("expression"), draws["expression"][:, 0, 2].mean())
    assert result.dims["expression"] == ("world", "gene")  # the original is untouched
    with pytest.raises(KeyError, match="No dimension 'cell'"):
        result.sel(cell="c0")
    with pytest.raises(KeyError, match="'hypothetical' is absent"):
        result.sel(world="hypothetical")
    repeated = CausalResult({"x": np.zeros((2, 2))}, dims={"x": ["unit"]}, coords={"unit": "aa"})
    with pytest.raises(KeyError, match="'a' is repeated"):
        repeated.sel(unit="a")


def test_the_callers_inputs_are_neither_mutated_nor_shared():
    draws = _draws()
    dims = {"expression": ["world", "gene"]}
    coords = {"world": WORLDS, "gene": GENES}
    attrs = {"query": "counterfactual"}
    before = copy.deepcopy((draws, dims, coords, attrs))
    result = CausalResult(draws, dims=dims, coords=coords, attrs=attrs)
    result.sel(world="factual").summary()
    result.to_dataframe()
    for given, kept in zip((draws, dims, coords, attrs), before):
        assert given.keys() == kept.keys()
    for name in draws:
        np.testing.assert_array_equal(draws[name], before[0][name])
    assert (dims, coords, attrs) == before[1:]
    draws["sigma"][0] = -1.0  # a later change on the caller's side does not reach the result
    assert result["sigma"][0] == before[0]["sigma"][0]
    with pytest.raises(ValueError, match="read-only"):
        result["sigma"][0] = -1.0


def test_jax_arrays_become_numpy_arrays():
    result = CausalResult({"effect": jnp.arange(6.0).reshape(3, 2)})
    assert type(result["effect"]) is np.ndarray
    np.testing.assert_array_equal(result.mean("effect"), [2.0, 3.0])


@pytest.mark.parametrize(
    ("draws", "keywords", "message"),
    [
        ({}, {}, "at least one quantity"),
        ({"a": 1.0}, {}, r"'a' has no samples \(shape \(\)\)"),
        ({"a": np.zeros((0, 2))}, {}, "'a' has no samples"),
        ({"a": np.zeros(4), "b": np.zeros((3, 2))}, {}, "'b' has 3 samples but 'a' has 4"),
        (
            {"a": np.zeros((4, 2))},
            {"dims": {"a": ["x", "y"]}},
            r"1 axes after sample.*\('x', 'y'\)",
        ),
        ({"a": np.zeros((4, 2))}, {"dims": {"b": ["x"]}}, r"unknown quantities \['b'\]"),
        ({"a": np.zeros((4, 2))}, {"dims": {"a": ["chain"]}}, "'chain' of 'a' is reserved"),
        ({"a": np.zeros((4, 2))}, {"dims": {"a": ["mean"]}}, "'mean' of 'a' is reserved"),
        (
            {"a": np.zeros((4, 2)), "b": np.zeros((4, 3))},
            {"dims": {"a": ["gene"], "b": ["gene"]}},
            "'gene' has size 3 in 'b' but 2 in 'a'",
        ),
        (
            {"a": np.zeros((4, 2))},
            {"dims": {"a": "gene"}, "coords": {"gene": ["x", "y", "z"]}},
            r"coords\['gene'\] has 3 labels but dimension 'gene' of 'a' has size 2",
        ),
        ({"a": np.zeros((4, 2))}, {"coords": {"cell": ["c0"]}}, r"unknown dimensions \['cell'\]"),
    ],
)
def test_invalid_inputs_raise_clear_errors(draws, keywords, message):
    with pytest.raises(ValueError, match=message):
        CausalResult(draws, **keywords)
