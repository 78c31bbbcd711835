"""The plumbing of :meth:`LCD.fit` after registration: the program's data, where the guide
starts, the encoder's inputs, and the SVI call of linear drift (neural drift: :mod:`._neural_fit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from causalcell.inference import AmortizedGuide, Posterior, Strata, default_encoder_inputs, fit
from causalcell.models.lcd._decoder import DECODER_SITES
from causalcell.models.lcd._guide import lcd_local_posterior
from causalcell.models.lcd._kinds import BIAS_KINDS, knockout_rank_of
from causalcell.models.lcd._pairs import pair_design, screen_kinds
from causalcell.models.lcd._program import lcd_model
from causalcell.models.lcd._start import (
    condition_means,
    condition_rates,
    initial_drift,
    initial_values,
    noise_split,
    pair_starts,
)
from causalcell.noise import NOISE_MODELS, NoiseModel, noise_model

__all__ = [
    "NOISE_MODELS",
    "PreparedScreen",
    "SviProblem",
    "check_condition_batch",
    "condition_encoder_inputs",
    "condition_strata",
    "fit_options",
    "linear_problem",
    "noise_model",
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
    design = pair_design(registry, space.coordinates, screen_kinds(intervention)[0])
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
    pairs (active in each condition, coordinates, kinds) and where they start
    (:func:`pair_starts`)."""
    latent_variance, noise_start = noise_split(arrays, rates, noise)
    values = {}
    for kind in screen_kinds(intervention):  # the baseline is the same for every kind
        values.update(initial_values(rates, arrays.condition_targets, kind, latent_variance))
    start = {**space.latent_values(values, arrays), **noise_start}
    pair_data = {}
    if design is not None:
        pairs = design.pairs(registry.condition_perturbations)
        start.update(pair_starts(rates, latent_variance, design, pairs, start))
        pair_data = {
            "pair_active": np.asarray(pairs.active),
            "pair_coordinates": design.coordinate,
            "pair_kinds": design.kind,
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
    bias_only = set(screen_kinds(intervention)) <= set(BIAS_KINDS)
    if bias_only and space.latent_size > SHARED_MESSAGES_ABOVE:
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
