"""Where an LCD fit starts: the screen's condition statistics, the per-target intervention
parameters and the drift from pseudobulk, the split of each gene's variance between latent and
noise, and the (perturbation, target) pairs' hierarchy (DESIGN 4.3)."""

from __future__ import annotations

import warnings

import numpy as np

from causalcell._core.overdispersion import split_overdispersion
from causalcell.clipr import IllConditionedResponsesWarning, NotIdentifiedWarning, direct_effects
from causalcell.metrics import pseudobulk
from causalcell.models.lcd._drift import raw_weights_of
from causalcell.models.lcd._kinds import BIAS_KINDS, PARAMETER_SITE
from causalcell.models.lcd._pairs import PAIR_KINDS, pair_start, screen_kinds
from causalcell.noise import NegativeBinomial, NoiseModel

__all__ = [
    "condition_means",
    "condition_rates",
    "initial_drift",
    "initial_values",
    "noise_split",
    "pair_starts",
]

_NEGATIVE_BINOMIAL = NegativeBinomial()


def condition_means(values, arrays) -> np.ndarray:
    """Mean of ``values`` [cells, d] over the cells of each condition, in registry order."""
    bulk = pseudobulk(values, arrays.condition_index)
    order = [bulk.index_of(str(condition)) for condition in range(len(arrays.condition_targets))]
    return bulk.means[order].astype(np.float32)


def condition_rates(arrays, noise: NoiseModel = _NEGATIVE_BINOMIAL) -> np.ndarray:
    """Mean of ``counts / size_factors`` over the cells of each condition ``[P, d]``; for
    continuous data on a log scale, ``e`` to the condition mean of ``y - log l`` (the log of
    either is the condition's level)."""
    if noise.is_count_model:
        return condition_means(arrays.counts / arrays.size_factors[:, None], arrays)
    values = arrays.counts - np.log(arrays.size_factors)[:, None]
    return np.exp(condition_means(values, arrays))


def initial_values(rates, condition_targets, intervention: str, latent_variance) -> dict:
    """Where the global guide starts: control baseline and per-target effects from pseudobulk.

    Log mean fractions per condition (``rates``, :func:`condition_rates`), less half the genes'
    ``latent_variance`` (a lognormal rate's mean is ``e^(mu + v / 2)``), give the control
    baseline and, for each target, the mean change of its own level over the conditions that
    carry it (shift effect, knockout depth, or the knockdown strength whose ``-softplus`` is
    that change).
    """
    levels = np.log(rates + 1e-6) - 0.5 * latent_variance
    control = levels[0]
    targets = np.asarray(condition_targets, bool)
    carried = np.maximum(targets.sum(axis=0), 1)
    change = ((levels - control) * targets).sum(axis=0) / carried
    values = {"baseline": control.astype(np.float32)}
    if intervention == "shift":
        values["intervention_effect"] = change
    elif intervention == "knockout":
        values["knockout_depth"] = np.minimum(change, -0.1)
    else:
        strength = np.maximum(-change, 0.05)
        values["knockdown_strength"] = np.log(np.expm1(strength))
    return {name: np.asarray(value, np.float32) for name, value in values.items()}


def initial_drift(rates, condition_targets, intervention: str, space, prior_mask) -> dict:
    """Where the drift's raw weights and log-scalings start on a shift or knockdown screen:
    closed-form CLIPR of the pseudobulk responses, denoised (empty on knockout screens).

    Under a bias intervention the change of the log mean rates is ``-A^{-1} e_j delta_j``, so
    :func:`causalcell.clipr.direct_effects` of the single targets' responses estimates every
    direct effect onto and from a perturbed gene (the rest start at zero). Entries below twice
    the noise level (1.4826 times the median absolute entry, a robust scale when most
    entries are zero) are soft-thresholded to zero; :func:`._drift.raw_weights_of` maps the
    rest into the dominance set. Starting at zero instead, SVI left weak true edges in the
    prior's spike at zero. ``rates`` are :func:`condition_rates`, ``condition_targets`` the
    screen's ``[P, genes]``, ``space`` its gene space, ``prior_mask`` in latent coordinates.
    """
    if not set(screen_kinds(intervention)) <= set(BIAS_KINDS):
        return {}
    levels = np.log(rates + 1e-6)
    targets = np.asarray(condition_targets, bool)
    single = np.flatnonzero(targets.sum(axis=-1) == 1)
    genes, first = np.unique(targets[single].argmax(axis=-1), return_index=True)
    single = single[first]
    latent_size, modelled = space.latent_size, len(space.modelled)  # modelled genes lead
    effects = np.zeros((latent_size, latent_size))
    if single.size:
        responses = (levels[single, :modelled] - levels[0, :modelled]).T
        with warnings.catch_warnings():  # a poor start is still a start
            warnings.simplefilter("ignore", IllConditionedResponsesWarning)
            warnings.simplefilter("ignore", NotIdentifiedWarning)
            estimate = direct_effects(responses, targets=genes)
        effects[:modelled, :modelled] = np.nan_to_num(estimate.mean)
    off = ~np.eye(latent_size, dtype=bool)
    entries = np.abs(effects[:modelled, :modelled][off[:modelled, :modelled]])
    noise = 1.4826 * np.median(entries) if entries.size else 0.0  # one gene: no entry
    effects = np.sign(effects) * np.maximum(np.abs(effects) - 2.0 * noise, 0.0) * off
    if prior_mask is not None:
        effects = effects * np.asarray(prior_mask)
    raw, log_scaling = raw_weights_of(effects)
    return {"drift_weights": raw, "log_scaling": log_scaling}


def pair_starts(rates, latent_variance, design, pairs, start) -> dict:
    """Where the pairs' hierarchy starts: each pair's own pseudobulk change
    (:func:`initial_values` over the conditions that apply its perturbation, in its kind's
    parameter), each target's parameter of a kind at the mean of its pairs of that kind, and
    the deviations between them (:func:`._pairs.pair_start`). ``start`` holds the per-target
    starts over the latent coordinates (modelled genes lead, as in ``rates``' columns)."""
    columns = design.coordinate
    active = np.asarray(pairs.active) > 0
    own = np.zeros(len(columns), np.float32)
    target = np.zeros(len(columns), np.float32)
    updated = {}
    for index, kind in enumerate(PAIR_KINDS):
        chosen = design.kind == index
        if not chosen.any():
            continue
        site = PARAMETER_SITE[kind]
        values = initial_values(rates[:, columns], active, kind, latent_variance[columns])[site]
        own[chosen] = values[chosen]
        size = len(start[site])
        sums = np.bincount(columns[chosen], weights=values[chosen], minlength=size)
        counts = np.bincount(columns[chosen], minlength=size)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), start[site]).astype(np.float32)
        updated[site] = mean
        target[chosen] = mean[columns[chosen]]
    return {**updated, **pair_start(own, target)}


def noise_split(arrays, rates, noise: NoiseModel) -> tuple[np.ndarray, dict]:
    """Each gene's start of latent variance (of its log-rate, within a condition) and of the
    noise parameters: the split of its variance between the two.

    Negative binomials (zero-inflated too) take the split of the count variance that maximises
    the exact lognormal-negative-binomial marginal likelihood
    (:mod:`causalcell._core.overdispersion`; every gene's, modelled or decoded: the fit does
    not leave a start away from it); Poisson's latent variance is the whole log excess over
    Poisson variance, the same split's total.
    Continuous data give the latent and the Gaussian noise half of each gene's pooled
    within-condition variance each; its latent variance is not subtracted from the levels
    (a Gaussian's mean is not a lognormal's).
    """
    if not noise.is_count_model:
        residual = arrays.counts - condition_means(arrays.counts, arrays)[arrays.condition_index]
        scale = np.sqrt(0.5 * np.maximum(residual.var(axis=0), 1e-6))
        return np.zeros(arrays.counts.shape[1]), {
            noise.site_name("scale"): scale.astype(np.float32)
        }
    concentration, variance = split_overdispersion(
        arrays.counts, arrays.size_factors, arrays.condition_index, rates
    )
    if "concentration" not in noise.parameter_names:  # Poisson: the split's total log excess
        return variance + np.log1p(1.0 / concentration), {}
    return variance, {noise.site_name("concentration"): concentration.astype(np.float32)}
