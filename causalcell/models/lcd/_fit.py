"""The plumbing of :meth:`LCD.fit` after registration: the program's data, where the guide
starts, the encoder's inputs, and the SVI call of linear drift (neural drift: :mod:`._neural_fit`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from causalcell._core.overdispersion import split_overdispersion
from causalcell.clipr import IllConditionedResponsesWarning, NotIdentifiedWarning, direct_effects
from causalcell.inference import AmortizedGuide, Posterior, Strata, default_encoder_inputs, fit
from causalcell.metrics import pseudobulk
from causalcell.models.lcd._decoder import DECODER_SITES
from causalcell.models.lcd._drift import raw_weights_of
from causalcell.models.lcd._guide import lcd_local_posterior
from causalcell.models.lcd._pairs import pair_design, pair_start, pair_weights
from causalcell.models.lcd._program import (
    BIAS_KINDS,
    PARAMETER_SITE,
    knockout_rank_of,
    lcd_model,
)
from causalcell.noise import (
    Gaussian,
    NegativeBinomial,
    NoiseModel,
    Poisson,
    ZeroInflatedNegativeBinomial,
)

__all__ = [
    "NOISE_MODELS",
    "PreparedScreen",
    "SviProblem",
    "check_condition_batch",
    "condition_encoder_inputs",
    "condition_means",
    "condition_rates",
    "condition_strata",
    "fit_options",
    "initial_drift",
    "initial_values",
    "linear_problem",
    "noise_model",
    "noise_split",
    "prepare_screen",
    "screen_data",
]


class SviProblem(NamedTuple):
    """One drift family's program on a prepared screen, with its amortized guide's arguments:
    what ``LCD.fit`` fits and what rebuilds the guide of a saved fit (``LCD.load``)."""

    model: Callable
    data: dict
    model_kwargs: dict
    guide_kwargs: dict  #: arguments of :class:`causalcell.inference.AmortizedGuide`

    def fit(self, **options) -> Posterior:
        """:func:`causalcell.inference.fit` of the program with its guide (``options``:
        steps, optimizer, batches, key...)."""
        return fit(
            self.model,
            self.data,
            model_kwargs=self.model_kwargs,
            guide_kwargs=self.guide_kwargs,
            **options,
        )

    def load(self, path) -> Posterior:
        """The posterior a fit of this problem saved to ``path`` (:meth:`Posterior.load`)."""
        return Posterior.load(
            path,
            self.model,
            data=self.data,
            guide=AmortizedGuide(self.model, **self.guide_kwargs),
            model_kwargs=self.model_kwargs,
        )


#: ``LCD.fit``'s ``noise``: how the latent log-expression is observed.
NOISE_MODELS = {
    "negative_binomial": NegativeBinomial(),
    "zero_inflated_negative_binomial": ZeroInflatedNegativeBinomial(),
    "poisson": Poisson(),
    "gaussian": Gaussian(),
}


def noise_model(name: str) -> NoiseModel:
    """The noise model ``LCD.fit(noise=name)`` observes the cells through."""
    if name not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {sorted(NOISE_MODELS)}, got {name!r}.")
    return NOISE_MODELS[name]


class PreparedScreen(NamedTuple):
    """A registered screen ready for either drift's fit (:func:`prepare_screen`)."""

    data: dict
    arrays: object
    space: object
    encoder_inputs: object
    intervention: str
    start: dict
    prior_mask: object
    rates: np.ndarray  # condition_rates(arrays, noise)
    noise: NoiseModel


def prepare_screen(
    arrays, space, registry, intervention: str, prior_mask, noise: NoiseModel
) -> PreparedScreen:
    """The program's data, the guide's start, the encoder's inputs, the prior mask in latent
    coordinates and the condition rates, from the registered screen's ``arrays`` in
    ``space``'s gene order, observed through ``noise``."""
    rates = condition_rates(arrays, noise)  # once per fit: the start and the guide's messages
    design = pair_design(registry, space.coordinates)
    data, start, prior_mask = screen_data(
        arrays, rates, space, intervention, prior_mask, noise, design, registry
    )
    encoder_inputs = condition_encoder_inputs(len(registry.conditions), noise.is_count_model)
    return PreparedScreen(
        data, arrays, space, encoder_inputs, intervention, start, prior_mask, rates, noise
    )


#: Shift and knockdown screens with more latent coordinates than this take the guide's message
#: precisions at the mean counts over all cells, so that every condition shares one posterior
#: covariance (:func:`._guide.lcd_local_posterior`'s ``pooled_counts``); smaller ones keep one
#: per condition (a factorisation of order ``m`` per condition of the batch).
SHARED_MESSAGES_ABOVE = 256
#: ``condition_batch="auto"``: conditions per minibatch on screens of more than
#: :data:`AUTO_CONDITIONS` conditions (uniform minibatches below).
AUTO_CONDITION_BATCH = 16
AUTO_CONDITIONS = 64


def condition_strata(arrays, condition_batch, batch_size) -> Strata | None:
    """The condition-by-condition minibatches of ``LCD.fit(condition_batch=...)``, or None.

    A step then touches ``condition_batch`` conditions, so its cost no longer grows with the
    screen's conditions: the linear program and guide compute stationary laws and
    factorisations only for the batch's conditions (:func:`causalcell.inference.batch_strata`),
    a knockout screen's Lyapunov solves included. The draw stays unbiased
    (:class:`causalcell.inference.Strata`: conditions with probability proportional to their
    cells), at the price of more gradient noise from cells of one condition being alike.
    """
    check_condition_batch(condition_batch, batch_size)
    if condition_batch == "auto":
        many = len(arrays.condition_targets) > AUTO_CONDITIONS
        condition_batch = AUTO_CONDITION_BATCH if many and batch_size is not None else None
    if condition_batch is None:
        return None
    return Strata(arrays.condition_index, int(condition_batch), batch_size)


def check_condition_batch(condition_batch, batch_size) -> None:
    """Raise for a ``condition_batch`` that is not ``"auto"``, ``None`` or a positive integer,
    or one without a ``batch_size`` (``LCD.fit`` calls it before registering the data)."""
    if condition_batch in ("auto", None):
        return
    if (
        isinstance(condition_batch, bool)
        or not isinstance(condition_batch, int | np.integer)
        or condition_batch < 1
    ):
        raise ValueError(
            f"condition_batch must be a positive integer, None or 'auto', got {condition_batch!r}."
        )
    if batch_size is None:
        raise ValueError("condition_batch needs a batch_size (cells per step); got None.")


def fit_options(arrays, num_steps, learning_rate, batch_size, condition_batch) -> dict:
    """The options of :func:`causalcell.inference.fit` that ``LCD.fit`` sets: Adam whose step
    size decays tenfold over the fit, and the (condition-by-condition) minibatches."""
    return {
        "optimizer": optax.adam(optax.exponential_decay(learning_rate, num_steps, 0.1)),
        "num_steps": num_steps,
        "batch_size": batch_size,
        "strata": condition_strata(arrays, condition_batch, batch_size),
    }


def condition_means(values, arrays) -> np.ndarray:
    """Mean of ``values`` [cells, d] over the cells of each condition, in registry order."""
    bulk = pseudobulk(values, arrays.condition_index)
    order = [bulk.index_of(str(condition)) for condition in range(len(arrays.condition_targets))]
    return bulk.means[order].astype(np.float32)


def condition_rates(arrays, noise: NoiseModel = NOISE_MODELS["negative_binomial"]) -> np.ndarray:
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
    if intervention not in BIAS_KINDS:
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


def screen_data(
    arrays,
    rates,
    space,
    intervention: str,
    prior_mask,
    noise=NOISE_MODELS["negative_binomial"],
    design=None,
    registry=None,
):
    """The program's data (internal gene order, latent coordinates), where the global guide
    starts, and the prior mask in latent coordinates (``None`` stays ``None``); ``rates`` are
    :func:`condition_rates`. With a :class:`._pairs.PairDesign` (and its ``registry``), the
    pairs' weights and coordinates, and their deviations' start from each pair's own
    pseudobulk change."""
    latent_variance, noise_start = noise_split(arrays, rates, noise)
    values = initial_values(rates, arrays.condition_targets, intervention, latent_variance)
    start = {**space.latent_values(values, arrays), **noise_start}
    pair_data = {}
    if design is not None:
        active = np.asarray(registry.condition_perturbations)[:, design.perturbation]
        columns = design.coordinate  # modelled genes lead the internal gene order
        own = initial_values(rates[:, columns], active, intervention, latent_variance[columns])
        site = PARAMETER_SITE[intervention]
        start.update(pair_start(own[site], design, start[site]))
        pair_data = {
            "pair_weights": pair_weights(
                registry.condition_perturbations, design, space.latent_size
            ),
            "pair_coordinates": design.coordinate,
        }
    data = {
        "counts": arrays.counts,
        "condition_index": arrays.condition_index,
        "condition_targets": space.latent_targets(arrays.condition_targets).astype(np.float32),
        "size_factors": arrays.size_factors,
        "baseline_prior": start["baseline"],
        **pair_data,
    }
    if "decoder_offset" in start:
        data["decoded_prior"] = start["decoder_offset"]
        data["response_scales"] = start.pop("response_scales")
    prior_mask = space.latent_mask(prior_mask)
    if prior_mask is not None:
        data["prior_mask"] = prior_mask
    return data, start, prior_mask


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


def condition_encoder_inputs(conditions: int, count_data: bool = True):
    """Encoder features: log1p-normalised counts (continuous data: the values) and the cell's
    condition (one-hot)."""

    def encoder_inputs(data, index):
        condition = jax.nn.one_hot(data["condition_index"][index], conditions)
        values = default_encoder_inputs(data, index) if count_data else data["counts"][index]
        return jnp.concatenate([values, condition], axis=-1)

    return encoder_inputs


def linear_problem(screen: PreparedScreen, settings: dict) -> SviProblem:
    """:func:`._program.lcd_model` with the amortized guide and the exact local posterior
    (:func:`._guide.lcd_local_posterior`); ``settings``: ``LCD.settings`` (the linear
    program takes no ``drift_options``: ``LCD.fit`` rejects them)."""
    data, arrays, space = screen.data, screen.arrays, screen.space
    intervention, start = screen.intervention, screen.start
    global_guide, rank = settings["global_guide"], settings["rank"]
    point_estimates = ()
    if not space.is_full and global_guide in ("auto", "normal", "kronecker"):
        # Thousands of decoder globals: the decoder by MAP (see _gene_space.DECODER_SITES),
        # the rest mean-field unless the drift's rows and columns are asked to correlate.
        global_guide = "normal" if global_guide == "auto" else global_guide
        point_estimates = DECODER_SITES
    # Knockout screens: each condition's law by low-rank updates of one inverse (the most
    # targets of a condition is the rank), instead of one solve of order m per condition.
    update_rank = knockout_rank_of(intervention, arrays.condition_targets)
    rates = screen.rates
    pooled = None
    if intervention in BIAS_KINDS and space.latent_size > SHARED_MESSAGES_ABOVE:
        pooled = arrays.counts.mean(axis=0)  # float32 [genes], dense
    return SviProblem(
        lcd_model,
        data,
        {
            "intervention": intervention,
            "programs": space.programs,
            "knockout_rank": update_rank,
            "noise": screen.noise,
        },
        {
            "encoder_inputs": screen.encoder_inputs,
            "local_posterior": lcd_local_posterior(
                intervention,
                condition_means(arrays.counts, arrays),
                space.programs,
                rates,
                update_rank,
                pooled,
                screen.noise,
            ),
            "init_values": {
                **start,
                **initial_drift(
                    rates, arrays.condition_targets, intervention, space, data.get("prior_mask")
                ),
            },
            "global_guide": global_guide,
            "rank": rank,
            "point_estimates": point_estimates,
        },
    )
