"""The decoder's data-driven start and its empirical-Bayes response prior (no fit: numpy only)."""

import numpy as np

from causalcell.data import ScreenArrays
from causalcell.models.lcd._decoder import _level_variances, initial_decoder

DECODED = 1000
CELLS = 200  # per condition
RESPONSE_SCALE = 0.3  # Laplace scale of the decoded genes' responses to gene A


def _screen(rng):
    """Control, A shifted by one nat, B shifted by one nat; decoded genes respond to A with
    ``Laplace(0, RESPONSE_SCALE)`` log-changes and not at all to B. Poisson counts, unit sizes,
    decoded means of 2 per cell (sampling variance of a change ``2 / (CELLS * 2) = 0.005``)."""
    responses = rng.laplace(0.0, RESPONSE_SCALE, DECODED)
    log_means = np.zeros((3, 2 + DECODED))
    log_means[:, :2] = np.log(20.0)
    log_means[:, 2:] = np.log(2.0)
    log_means[1, 0] += 1.0
    log_means[1, 2:] += responses
    log_means[2, 1] += 1.0
    index = np.repeat(np.arange(3), CELLS)
    counts = rng.poisson(np.exp(log_means[index])).astype(np.float32)
    return ScreenArrays(
        counts=counts,
        size_factors=np.ones(counts.shape[0], np.float32),
        condition_index=index.astype(np.int32),
        condition_targets=np.array([[0, 0], [1, 0], [0, 1]], bool),
        covariates={},
        genes=("A", "B", *(f"G{i}" for i in range(DECODED))),
        conditions=("control", "A", "B"),
    )


def test_level_variances_are_the_poisson_variance_of_a_log_mean():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (2000, 50)).astype(np.float32)
    sizes = np.ones(2000, np.float32)
    one_hot = np.ones((2000, 1), np.float32)
    totals = one_hot.T @ counts
    variances = _level_variances(one_hot, counts, sizes, totals, one_hot.T @ sizes)
    # var(log mean) = lambda / n / lambda^2 = 1 / (n lambda). The sample variance of 2,000
    # Poisson(3) draws has relative sd sqrt((1/3 + 2) / 2000) = 0.034 per gene; the mean over
    # 50 genes is within 2% of it at 4 sd (5% allows the half-count offset's 0.5 / 6000).
    np.testing.assert_allclose(variances.mean(), 1.0 / (2000 * 3.0), rtol=0.05)


def test_response_scales_are_the_signal_above_the_pseudobulk_noise():
    arrays = _screen(np.random.default_rng(1))
    responses, loadings, scales = initial_decoder(arrays, modelled=2, programs=0)
    assert responses.shape == (DECODED, 2) and loadings is responses
    # The ridge (5% of the mean input energy, here 0.05 with one unit change per column)
    # shrinks each coefficient by 1 / 1.05. A Laplace scale estimated from the mean square of
    # 1,000 draws has relative sd sqrt(20 / 1000) / 2 = 0.07 (kurtosis 6); 20% is 3 sd.
    np.testing.assert_allclose(scales[0], RESPONSE_SCALE / 1.05, rtol=0.2)
    # B moves no decoded gene: its coefficients are pure noise (variance 0.005 / 1.05^2), whose
    # uncorrected Laplace scale would be sqrt(0.0045 / 2) = 0.048. The noise estimate removes
    # it: what is left is the noise of the mean square over 1,000 genes (measured 0.001-0.019
    # over seeds 0-3; 0.03 stays well below the uncorrected 0.048).
    assert scales[1] < 0.03
