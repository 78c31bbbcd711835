"""Tests of the ArviZ adapter on the installed ArviZ."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.stats
import xarray

from causalcell._core import arviz_adapter as _arviz
from causalcell._core.arviz_adapter import ARVIZ_MAJOR, from_groups, get_group, group_names, hdi

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz


def _groups():
    rng = np.random.default_rng(0)
    return {
        "posterior": {"effect": rng.normal(size=(2, 30, 3)), "sigma": rng.gamma(2.0, size=(2, 30))},
        "posterior_predictive": {"counts": rng.poisson(3.0, size=(2, 30, 4, 3))},
        "observed_data": {"counts": rng.poisson(3.0, size=(4, 3))},
    }


def test_version_is_the_installed_one():
    assert str(ARVIZ_MAJOR) == arviz.__version__.split(".")[0]


def test_importing_causalcell_does_not_import_arviz():
    # ArviZ (with matplotlib) is imported on the first from_groups call, not at package import.
    code = "import sys, causalcell; assert 'arviz' not in sys.modules, 'arviz imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_groups_round_trip_with_values_coordinates_and_dimensions():
    groups = _groups()
    coords = {"gene": ["GATA1", "CEBPA", "SPI1"], "cell": ["c0", "c1", "c2", "c3"]}
    dims = {"effect": ["gene"], "counts": ["cell", "gene"]}
    data = from_groups(groups, coords=coords, dims=dims)
    assert set(group_names(data)) == set(groups)
    for group, variables in groups.items():
        dataset = get_group(data, group)
        assert isinstance(dataset, xarray.Dataset)
        assert set(dataset.data_vars) == set(variables)
        for name, values in variables.items():
            np.testing.assert_array_equal(dataset[name].values, values)
    posterior = get_group(data, "posterior")
    assert posterior["effect"].dims == ("chain", "draw", "gene")
    assert posterior["sigma"].dims == ("chain", "draw")
    assert list(posterior["gene"].values) == coords["gene"]
    predictive = get_group(data, "posterior_predictive")["counts"]
    assert predictive.dims == ("chain", "draw", "cell", "gene")
    observed = get_group(data, "observed_data")["counts"]
    assert observed.dims == ("cell", "gene")  # data groups carry no sample axes
    assert list(observed["cell"].values) == coords["cell"]


def test_unknown_groups_and_names_raise():
    with pytest.raises(ValueError, match="posterior_samples"):
        from_groups({"posterior_samples": {"a": np.zeros((1, 2))}})
    data = from_groups({"posterior": {"a": np.zeros((1, 2))}})
    with pytest.raises(KeyError, match="prior"):
        get_group(data, "prior")


def test_hdi_of_a_large_normal_sample_matches_the_closed_form():
    number, prob = 100_000, 0.9
    locations, scales = np.array([0.0, 3.0, -1.0]), np.array([1.0, 0.5, 2.0])
    rng = np.random.default_rng(1)
    draws = locations + scales * rng.standard_normal((number, 3))
    lower, upper = hdi(draws, prob)
    half_width = scipy.stats.norm.ppf(0.5 + prob / 2)  # the HDI of a normal is central
    # Width = difference of the 5% and 95% sample quantiles: its standard error is
    # sqrt((2 a (1 - a) - 2 a^2) / n) / density(z) with a = 0.05, i.e. 0.0092 sigma; 5 of them.
    tail = (1 - prob) / 2
    density = scipy.stats.norm.pdf(half_width)
    width_error = np.sqrt((2 * tail * (1 - tail) - 2 * tail**2) / number) / density
    np.testing.assert_array_less(
        np.abs(upper - lower - 2 * half_width * scales), 5 * width_error * scales
    )
    # Where the narrowest window sits is only n^(-1/3)-consistent (its width is flat near the
    # optimum): measured sd 0.021 sigma at n = 1e5 over 200 seeds, so 0.1 sigma is ~5 of them.
    np.testing.assert_array_less(np.abs(lower - (locations - half_width * scales)), 0.1 * scales)
    np.testing.assert_array_less(np.abs(upper - (locations + half_width * scales)), 0.1 * scales)


def test_hdi_of_exact_normal_quantiles():
    # Draws at the normal quantiles of (i + 1/2) / n: the exact HDI up to the grid spacing,
    # about 1 / (n density(1.64)) = 1e-4 at n = 1e5.
    number = 100_000
    grid = scipy.stats.norm.ppf((np.arange(number) + 0.5) / number)
    lower, upper = hdi(grid[::-1], 0.9)
    np.testing.assert_allclose([lower, upper], [-1.6448536, 1.6448536], atol=3e-4)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_hdi_equals_arviz(axis):
    rng = np.random.default_rng(2)
    draws = np.moveaxis(rng.gamma(2.0, size=(501, 3, 2)), 0, axis)  # skewed: HDI is not central
    lower, upper = hdi(draws, 0.8, axis=axis)
    samples = np.moveaxis(draws, axis, 0).reshape(501, -1)
    if ARVIZ_MAJOR == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            expected = np.array([arviz.hdi(column, hdi_prob=0.8) for column in samples.T])
    else:  # 1.x: the array-level function of arviz-stats, samples on the given axis
        from arviz_stats.base.array import array_stats

        expected = array_stats.hdi(samples, 0.8, axis=0)
    np.testing.assert_array_equal(lower.reshape(-1), expected[:, 0])  # same algorithm: exact
    np.testing.assert_array_equal(upper.reshape(-1), expected[:, 1])


def test_hdi_nan_and_bad_arguments():
    draws = np.random.default_rng(3).normal(size=(100, 2))
    draws[5, 1] = np.nan
    lower, upper = hdi(draws, 0.5)
    assert np.isfinite(lower[0]) and np.isnan(lower[1]) and np.isnan(upper[1])
    with pytest.raises(ValueError, match="prob"):
        hdi(draws, 1.0)
    with pytest.raises(ValueError, match="too few"):
        hdi(draws[:1], 0.5)
    assert _arviz.GROUP_NAMES[0] == "posterior"
