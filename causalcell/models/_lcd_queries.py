"""Queries of linear-drift LCD behind :class:`causalcell.models.lcd.LCD` (DESIGN 3.1): target
requests, stationary laws, drifts, direct effects and generated cells; and the plumbing of
:meth:`LCD.fit` after registration (the program's data, where the guide starts, the SVI call).
The AnnData of generated cells is built here once (:func:`cells_anndata`) for linear and
neural predictions and for counterfactual worlds (:mod:`._lcd_worlds`).
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse

from causalcell._linalg import cholesky
from causalcell.clipr import linear_responses, posterior_direct_effects
from causalcell.inference import default_encoder_inputs, fit
from causalcell.metrics import pseudobulk
from causalcell.models._lcd_decoder import DECODER_SITES, reduce_programs
from causalcell.models._lcd_guide import lcd_local_posterior
from causalcell.models._lcd_neural_fit import fit_neural
from causalcell.models._lcd_program import condition_laws, lcd_model, linear_drift_from_sites
from causalcell.noise import NegativeBinomial
from causalcell.perturbations import canonical_label, parse_perturbation
from causalcell.preprocessing import normalize_log1p

__all__ = [
    "UnseenTargetError",
    "as_key",
    "cells_anndata",
    "condition_encoder_inputs",
    "condition_means",
    "condition_rates",
    "direct_effects",
    "fit_linear",
    "fit_screen",
    "generated_cells",
    "initial_values",
    "linear_drifts",
    "perturbation_targets",
    "predict_linear",
    "predict_query",
    "screen_data",
    "stationary_laws",
    "stationary_query",
]


class UnseenTargetError(ValueError):
    """A prediction asks for a target that no training cell carried."""


def as_key(key):
    """An integer seed or a PRNG key as a PRNG key."""
    return jax.random.key(key) if isinstance(key, int) else key


def perturbation_targets(model, perturbation: str, allow_prior_only: bool):
    """Multi-hot targets of ``perturbation`` over the latent coordinates of the fitted ``model``
    ``[m]``, whether any target is unseen in training, and its canonical label.

    Raises
    ------
    UnseenTargetError
        For a gene that is not in the data or not modelled, or (unless ``allow_prior_only``)
        that no training cell carried.
    """
    registry = model.registry
    members = parse_perturbation(
        perturbation, control=registry.control, separator=registry.separator
    )
    unknown = [gene for gene in members if gene not in model.genes]
    if unknown:
        shown = ", ".join(model.genes[:5]) + (", ..." if len(model.genes) > 5 else "")
        raise UnseenTargetError(
            f"{perturbation!r} names genes that are not modelled: {unknown}. Name genes of the "
            f"training data (LCD.genes: {shown}) joined by {registry.separator!r}, or "
            f"{registry.control[0]!r}."
        )
    decoded = [gene for gene in members if gene not in model.modelled_genes]
    if decoded:
        raise UnseenTargetError(
            f"{perturbation!r} targets {decoded}, which are not modelled (they are decoded "
            "from the latent state, so no intervention can act on them). Refit with "
            "LCD.fit(..., modelled_genes=[...]) naming them."
        )
    unseen = [gene for gene in members if gene not in model.trained_targets]
    if unseen and not allow_prior_only:
        raise UnseenTargetError(
            f"{perturbation!r} targets {unseen}, which no training cell carried, so LCD has "
            "learned nothing about their interventions. Pass allow_prior_only=True to predict "
            "from the prior of their intervention parameters (flagged in the output)."
        )
    row = np.isin(np.asarray(model.modelled_genes), members)
    row = np.concatenate([row, np.zeros(model.space.programs, bool)])  # programs: untargeted
    label = canonical_label(members, control=registry.control[0], separator=registry.separator)
    return row, bool(unseen), label


def stationary_laws(model, draws: dict, rows):
    """Per-draw stationary means ``[S, K, m]``, covariances and Cholesky factors of the latent
    state under the multi-hot targets ``rows`` ``[K, m]``."""
    targets = jnp.asarray(rows, jnp.float32)

    def one(draw):
        _, means, covariances = condition_laws(draw, targets, model.intervention, model._prior_mask)
        return means, covariances

    mean, covariance = jax.vmap(one)(draws)
    return mean, covariance, cholesky(covariance)


def linear_drifts(model, draws: dict, programs: bool) -> np.ndarray:
    """Drift matrices of the draws: of the whole state, or reduced to the modelled genes."""
    reduced = 0 if programs else model.space.programs

    def one(draw):
        matrix = linear_drift_from_sites(draw, model._prior_mask).matrix()
        return reduce_programs(matrix, reduced)

    return np.asarray(jax.vmap(one)(draws))


def direct_effects(model, targets, probability: float, *, drifts=None, draws=None):
    """:meth:`LCD.effects`: CLIPR on the responses of the drift matrices ``drifts`` (linear) or
    of the neural drift of ``draws`` linearised at the control fixed point."""
    genes = model.modelled_genes
    if targets is None:
        targets = [gene for gene in genes if gene in model.trained_targets]
    unknown = [gene for gene in targets if gene not in genes]
    if unknown:
        raise ValueError(f"effects(targets=...) names genes that are not modelled: {unknown}.")
    columns = [genes.index(gene) for gene in targets]
    if drifts is None:
        from causalcell.models._lcd_neural_queries import neural_responses  # it imports us

        responses = neural_responses(draws, model._prior_mask, columns)
    else:
        responses = linear_responses(drifts, columns)
    return posterior_direct_effects(
        responses, genes=list(genes), targets=list(targets), probability=probability
    )


def cells_anndata(counts, obs: pd.DataFrame, genes, latent) -> anndata.AnnData:
    """The AnnData of generated (or counterfactual) cells: ``X`` the counts (CSR, float32),
    ``layers["log1p"]`` and ``obsm["latent"]``.

    Like observed cells (scanpy's ``normalize_total`` + ``log1p``), each cell is normalised by
    its own total count, not by the library size the model drew.
    """
    counts = np.asarray(counts, np.float32)
    result = anndata.AnnData(
        X=scipy.sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=list(genes))
    )
    result.layers["log1p"] = normalize_log1p(counts, np.maximum(counts.sum(axis=1), 1.0))
    result.obsm["latent"] = np.asarray(latent, np.float32)
    return result


def generated_cells(
    latent,
    concentration,
    library_sizes,
    names,
    flags,
    num_cells: int,
    genes,
    size_key,
    count_key,
    log_rate=None,
) -> anndata.AnnData:
    """The AnnData of :meth:`LCD.predict`: latents ``[P * n, m]`` (perturbation-major,
    ``n = num_cells``) with log-rates ``log_rate`` ``[P * n, genes]`` (the latents themselves
    when every gene is a coordinate) pushed through the negative binomial, with library sizes
    drawn from the training cells."""
    log_rate = latent if log_rate is None else log_rate
    sizes = jax.random.choice(size_key, jnp.asarray(library_sizes), (latent.shape[0],))
    counts = NegativeBinomial().distribution(log_rate, sizes, concentration=concentration)
    counts = np.asarray(counts.sample(count_key), np.float32)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(np.repeat(names, num_cells)),
            "prior_only": np.repeat(flags, num_cells),
            "size_factor": np.asarray(sizes),
        },
        index=[f"generated{index}" for index in range(counts.shape[0])],
    )
    return cells_anndata(counts, obs, genes, latent)


#: Most posterior draws one prediction uses: cells ``c`` and ``c + PREDICT_DRAWS`` share a
#: draw, so a prediction of thousands of cells solves at most this many Lyapunov equations
#: per perturbation (16,000 draws of 50 genes took 3 minutes and 0.6 GB for the factors).
PREDICT_DRAWS = 500


def predict_linear(
    model, perturbations: Sequence[str], num_cells: int, *, key, allow_prior_only: bool
) -> anndata.AnnData:
    """:meth:`LCD.predict` for linear drift: cell ``c`` of every perturbation uses posterior
    draw ``c mod PREDICT_DRAWS`` (one Lyapunov solve per draw and perturbation, all in one
    vectorised call); each cell is a draw of the posterior predictive law."""
    requests = [perturbation_targets(model, label, allow_prior_only) for label in perturbations]
    rows, flags, names = (list(column) for column in zip(*requests, strict=True))
    draw_key, latent_key, size_key, count_key = jax.random.split(key, 4)
    num_draws = min(num_cells, PREDICT_DRAWS)
    repeats = -(-num_cells // num_draws)  # cells per draw, rounded up
    draws = model._draws(draw_key, num_draws)
    mean, _, factor = stationary_laws(model, draws, np.stack(rows))  # [S, K, m], [S, K, m, m]
    noise = jax.random.normal(latent_key, (num_draws, repeats, *mean.shape[1:]))
    latent = mean[:, None] + jnp.einsum("skij,srkj->srki", factor, noise)  # [S, R, K, m]
    means = jnp.broadcast_to(mean[:, None], latent.shape)
    log_rate = model.space.decode_draws(latent, means, draws)  # every gene, AnnData order

    def perturbation_major(values):
        """``[S, R, K, ...]`` -> ``[K * num_cells, ...]``: cell ``s R + r`` of each perturbation."""
        values = jnp.moveaxis(values, 2, 0).reshape(len(rows), -1, *values.shape[3:])
        return values[:, :num_cells].reshape(-1, *values.shape[2:])

    concentration = model.space.in_gene_order(draws["noise_concentration"])  # [S, genes]
    concentration = jnp.broadcast_to(
        concentration[:, None, None], (num_draws, repeats, len(rows), concentration.shape[-1])
    )
    return generated_cells(
        perturbation_major(latent),
        perturbation_major(concentration),
        model._library_sizes,
        names,
        flags,
        num_cells,
        model.genes,
        size_key,
        count_key,
        log_rate=perturbation_major(log_rate),
    )


def predict_query(model, perturbations, num_cells, key, allow_prior_only, simulation):
    """:meth:`LCD.predict`: the exact Gaussian law (linear) or simulated chains (neural)."""
    if model.drift_kind == "neural":
        from causalcell.models._lcd_neural_queries import predict_neural  # it imports us

        return predict_neural(
            model,
            perturbations,
            num_cells,
            key=key,
            allow_prior_only=allow_prior_only,
            **simulation,
        )
    if simulation:
        raise TypeError(f"Simulation options {sorted(simulation)} need drift='neural'.")
    return predict_linear(
        model, perturbations, num_cells, key=key, allow_prior_only=allow_prior_only
    )


def stationary_query(model, row, key, num_samples: int, simulation: dict):
    """:meth:`LCD.stationary` of the multi-hot targets ``row`` ``[m]``: per-draw mean and
    covariance, exact (linear) or Monte Carlo (neural)."""
    if model.drift_kind == "neural":
        from causalcell.models._lcd_neural_queries import stationary_neural  # it imports us

        return stationary_neural(model, row, key=key, num_samples=num_samples, **simulation)
    if simulation:
        raise TypeError(f"Simulation options {sorted(simulation)} need drift='neural'.")
    mean, covariance, _ = stationary_laws(model, model._draws(key, num_samples), row[None])
    return np.asarray(mean[:, 0]), np.asarray(covariance[:, 0])


def condition_means(values, arrays) -> np.ndarray:
    """Mean of ``values`` [cells, d] over the cells of each condition, in registry order."""
    bulk = pseudobulk(values, arrays.condition_index)
    order = [bulk.index_of(str(condition)) for condition in range(len(arrays.condition_targets))]
    return bulk.means[order].astype(np.float32)


def condition_rates(arrays) -> np.ndarray:
    """Mean of ``counts / size_factors`` over the cells of each condition ``[P, d]``."""
    return condition_means(arrays.counts / arrays.size_factors[:, None], arrays)


def initial_values(arrays, intervention: str) -> dict:
    """Where the global guide starts: control baseline and per-target effects from pseudobulk.

    Log mean fractions per condition give the control baseline and, for each target, the mean
    change of its own level over the conditions that carry it (shift effect, knockout depth, or
    the knockdown strength whose ``-softplus`` is that change).
    """
    levels = np.log(condition_rates(arrays) + 1e-6)
    control = levels[0]
    targets = arrays.condition_targets.astype(bool)
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


def screen_data(arrays, space, intervention: str, prior_mask):
    """The program's data (internal gene order, latent coordinates), where the global guide
    starts, and the prior mask in latent coordinates (``None`` stays ``None``)."""
    start = space.latent_values(initial_values(arrays, intervention), arrays)
    data = {
        "counts": arrays.counts,
        "condition_index": arrays.condition_index,
        "condition_targets": space.latent_targets(arrays.condition_targets).astype(np.float32),
        "size_factors": arrays.size_factors,
        "baseline_prior": start["baseline"],
    }
    if "decoder_offset" in start:
        data["decoded_prior"] = start["decoder_offset"]
    prior_mask = space.latent_mask(prior_mask)
    if prior_mask is not None:
        data["prior_mask"] = prior_mask
    return data, start, prior_mask


def condition_encoder_inputs(conditions: int):
    """Encoder features: log1p-normalised counts and the cell's condition (one-hot)."""

    def encoder_inputs(data, index):
        condition = jax.nn.one_hot(data["condition_index"][index], conditions)
        return jnp.concatenate([default_encoder_inputs(data, index), condition], axis=-1)

    return encoder_inputs


def fit_linear(
    data, arrays, space, encoder_inputs, intervention, start, global_guide, rank, options
):
    """SVI of :func:`._lcd_program.lcd_model` with the amortized guide and the exact local
    posterior (:func:`._lcd_guide.lcd_local_posterior`); ``options`` go to
    :func:`causalcell.inference.fit`."""
    point_estimates = ()
    if not space.is_full and global_guide in ("auto", "normal"):
        # Thousands of decoder globals: mean-field, the decoder by MAP (see
        # _lcd_decoder.DECODER_SITES).
        global_guide, point_estimates = "normal", DECODER_SITES
    return fit(
        lcd_model,
        data,
        model_kwargs={"intervention": intervention, "programs": space.programs},
        guide_kwargs={
            "encoder_inputs": encoder_inputs,
            "local_posterior": lcd_local_posterior(
                intervention,
                condition_means(arrays.counts, arrays),
                space.programs,
                None if space.is_full else condition_rates(arrays),
            ),
            "init_values": start,
            "global_guide": global_guide,
            "rank": rank,
            "point_estimates": point_estimates,
        },
        **options,
    )


def fit_screen(
    arrays, space, registry, intervention, prior_mask, drift, drift_options, guide_options, options
):
    """The posterior of :meth:`LCD.fit` (linear or neural drift) and the prior mask in latent
    coordinates, from the registered screen's ``arrays`` in ``space``'s gene order."""
    data, start, prior_mask = screen_data(arrays, space, intervention, prior_mask)
    encoder_inputs = condition_encoder_inputs(len(registry.conditions))
    if drift == "neural":
        posterior = fit_neural(
            data,
            encoder_inputs,
            space=space,
            intervention=intervention,
            initial_values=start,
            guide_options=guide_options,
            model_options=drift_options,
            **options,
        )
        return posterior, prior_mask
    global_guide, rank = guide_options["global_guide"], guide_options["rank"]
    posterior = fit_linear(
        data, arrays, space, encoder_inputs, intervention, start, global_guide, rank, options
    )
    return posterior, prior_mask
