"""Queries of a fitted concept model on arrays: per-cell counterfactuals (abduction, action,
prediction), generation under ``do``, and interventional probabilities of the concept SCM.

Every function takes posterior draws of the globals (``{site: [S, ...]}``) and returns draws
with a leading ``S`` axis, so intervals come from the draws; cells are processed in chunks so
that memory stays ``chunk x S x genes``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from causalcell._core.coupling import couple
from causalcell.models.concepts._program import (
    candidate_levels,
    completion_log_joint,
    concept_embeddings,
    decode,
)
from causalcell.models.concepts._scm import (
    ConceptSpec,
    intervene,
    labels_log_prob,
    sample_levels,
)
from causalcell.noise import NoiseModel

__all__ = [
    "counterfactual_draws",
    "couple_counts",
    "effect_table",
    "generated_draws",
    "interventional_probabilities",
    "label_log_density",
    "label_posterior",
    "label_shares",
    "mean_embeddings",
    "predictive_counts",
    "swapped_noise",
]


@functools.partial(jax.jit, static_argnames=("spec", "fixed", "abduct", "missing", "noise"))
def counterfactual_draws(
    key,
    draws: Mapping,
    spec: ConceptSpec,
    labels,
    own,
    rest,
    fixed,
    abduct=True,
    after=None,
    missing: tuple[int, ...] = (),
    observed=None,
    noise: NoiseModel | None = None,
) -> dict:
    """Factual and counterfactual log-rates of cells, per posterior draw.

    ``draws`` ``{site: [S, ...]}``; ``labels`` ``[n, K]`` observed levels; ``own`` ``[S, n, K D]``
    and ``rest`` ``[S, n, U]``: each draw's abducted per-cell noise (the guide's posterior);
    ``fixed`` ``((concept index, level index), ...)`` (static). Per draw the Gumbel noise of the
    changed concepts is abducted from that draw's mechanisms (:func:`._scm.intervene`).
    ``after``: optional ``(own, rest)`` of the counterfactual world (another cell's noise, for
    the population-level swap), with ``abduct=False`` (descendants from fresh noise).

    Cells lacking labels of the concepts ``missing`` (``-1`` in ``labels``): per draw their
    factual levels are drawn from their posterior given that draw's globals and noise,
    ``p(c | counts, observed labels) ~ p(labels = c) p(counts | c)`` over the completions of
    their labels (:func:`._program.completion_log_joint`, ``observed`` the program's
    ``(observations, size factors)`` under ``noise``), then abducted as observed ones; the draws
    run one at a time then (memory ``completions x n x G`` per draw).

    Returns ``{"levels": [S, n, K], "factual_levels": [S, n, K], "factual": [S, n, G],
    "counterfactual": [S, n, G]}``.
    """
    keys = jax.random.split(key, own.shape[0])
    fixed = dict(fixed)
    own_after, rest_after = (own, rest) if after is None else after
    candidates = candidate_levels(labels, spec, missing)[0] if missing else None

    def one(key, values, own, rest, own_after, rest_after):
        factual_levels = labels
        if missing:  # a key of its own: the abduction's draws stay those of labelled cells
            joint = completion_log_joint(
                values, spec, missing, labels, (own, rest), observed, noise,
                noise.parameters_of(values),
            )  # fmt: skip
            pick = jax.random.categorical(jax.random.fold_in(key, 1), joint, axis=0)
            factual_levels = jnp.take_along_axis(candidates, pick[None, :, None], axis=0)[0]
        levels = intervene(key, values, spec, factual_levels, fixed, abduct)
        factual = decode(values, concept_embeddings(values, spec, factual_levels, own), rest)
        changed = decode(values, concept_embeddings(values, spec, levels, own_after), rest_after)
        return levels, factual_levels, factual, changed

    arguments = (keys, dict(draws), own, rest, own_after, rest_after)
    if missing:
        outputs = jax.lax.map(lambda arguments: one(*arguments), arguments)
    else:
        outputs = jax.vmap(one)(*arguments)
    names = ("levels", "factual_levels", "factual", "counterfactual")
    return dict(zip(names, outputs, strict=True))


def couple_counts(key, noise: NoiseModel, parameters, counts, sizes, factual, changed):
    """Counterfactual counts of observed ``counts`` ``[n, G]`` by quantile coupling (each count
    keeps its randomised quantile; kept where the log-rate is) from log-rates ``factual`` to
    ``changed`` ``[n, G]``."""
    before = noise.distribution(factual, sizes, **parameters)
    after = noise.distribution(changed, sizes, **parameters)
    observed = noise.observation(counts, sizes)
    # Where the law does not change the value is kept exactly (continuous laws' quantile
    # round trip is exact only to rounding).
    return jnp.where(changed == factual, observed, couple(key, before, observed, after))


def swapped_noise(key, donors, own, shape, fixed):
    """The counterfactual world's noise of CausCell's swap: each intervened concept's part of
    ``own`` ``[S, n, K D]`` from a random training cell of the new level (``donors``: the
    training cells' encoder means ``[N, K D]`` and labels ``[N, K]``), a fresh unexplained part
    of ``shape``."""
    means, labels = donors
    width = own.shape[-1] // labels.shape[1]
    pick_key, fresh_key = jax.random.split(key)
    for position, (concept, level) in enumerate(fixed):
        chosen = np.flatnonzero(labels[:, concept] == level)
        if chosen.size == 0:
            raise ValueError(f"No training cell has level {level} of concept {concept}.")
        picked = jax.random.choice(jax.random.fold_in(pick_key, position), chosen, own.shape[:2])
        part = slice(concept * width, (concept + 1) * width)
        own = own.at[..., part].set(means[picked][..., part])
    return own, jax.random.normal(fresh_key, shape)


@functools.partial(jax.jit, static_argnames=("spec", "noise"))
def predictive_counts(key, values, spec: ConceptSpec, noise: NoiseModel, labels, own, rest, sizes):
    """One draw of the counts ``[n, G]`` of cells with levels ``labels`` and noise ``own``,
    ``rest`` under one draw ``values`` of the globals (the program's observation)."""
    log_rate = decode(values, concept_embeddings(values, spec, labels, own), rest)
    return noise.distribution(log_rate, sizes, **noise.parameters_of(values)).sample(key)


@functools.partial(jax.jit, static_argnames=("spec", "fixed", "num_cells"))
def generated_draws(key, draws: Mapping, spec: ConceptSpec, fixed, num_cells: int):
    """Levels ``[n, K]`` and log-rates ``[n, G]`` of ``num_cells`` new cells under ``do(fixed)``
    (``fixed`` as in :func:`counterfactual_draws`):
    cell ``i`` uses draw ``i mod S`` of the globals, its concepts from the SCM with ``fixed``
    set, its own noise and unexplained part from their priors."""
    count = next(iter(draws.values())).shape[0]
    which = jnp.arange(num_cells) % count
    values = {name: value[which] for name, value in draws.items()}
    level_key, own_key, rest_key = jax.random.split(key, 3)
    dimension = values[f"embedding_{spec.names[0]}"].shape[-1]
    unexplained = _inputs(values) - len(spec.names) * dimension

    def one(key, values):
        return sample_levels(key, values, spec, (), dict(fixed))

    levels = jax.vmap(one)(jax.random.split(level_key, num_cells), values)
    own = jax.random.normal(own_key, (num_cells, len(spec.names) * dimension))
    rest = jax.random.normal(rest_key, (num_cells, unexplained))

    def rates(values, levels, own, rest):
        return decode(values, concept_embeddings(values, spec, levels, own), rest)

    return levels, jax.vmap(rates)(values, levels, own, rest)


def _inputs(values: Mapping) -> int:
    """Width of the decoder's input (embeddings and unexplained part)."""
    first = values["decoder_hidden"] if "decoder_hidden" in values else values["decoder_out"]
    return first.shape[-2]


def interventional_probabilities(
    key, draws: Mapping, spec: ConceptSpec, parent: int, child: int, num_cells: int = 2000
) -> np.ndarray:
    return np.asarray(_probabilities(key, dict(draws), spec, parent, child, num_cells))


@functools.partial(jax.jit, static_argnames=("spec", "parent", "child", "num_cells"))
def _probabilities(key, draws, spec, parent, child, num_cells):
    """``[S, L_parent, L_child]``: ``P(child = l | do(parent = a))`` per draw, by ancestral
    sampling of ``num_cells`` cells per draw and parent level (the child's other parents at
    their interventional law)."""
    count = next(iter(draws.values())).shape[0]
    keys = jax.random.split(key, (count, spec.sizes[parent]))

    def one(keys, values):
        def at(key, level):
            levels = sample_levels(key, values, spec, (num_cells,), {parent: level})
            hits = jax.nn.one_hot(levels[:, child], spec.sizes[child])
            return hits.mean(axis=0)

        return jax.vmap(at)(keys, jnp.arange(spec.sizes[parent]))

    return jax.vmap(one)(keys, draws)


def effect_table(key, draws: Mapping, spec: ConceptSpec, probability: float) -> pd.DataFrame:
    """:meth:`ConceptModel.effects`: per edge and level pair, the posterior mean and
    equal-tailed ``probability`` interval of :func:`interventional_probabilities`."""
    tails = ((1 - probability) / 2, (1 + probability) / 2)
    rows = []
    for parent_name, child_name in spec.edges:
        parent, child = spec.index(parent_name), spec.index(child_name)
        edge_key = jax.random.fold_in(key, parent * len(spec.names) + child)
        values = interventional_probabilities(edge_key, draws, spec, parent, child)
        low, high = np.quantile(values, tails, axis=0)
        for a, parent_level in enumerate(spec.levels[parent]):
            for level, child_level in enumerate(spec.levels[child]):
                rows.append(
                    {
                        "parent": parent_name,
                        "child": child_name,
                        "parent_level": parent_level,
                        "child_level": child_level,
                        "probability": float(values[:, a, level].mean()),
                        "lower": float(low[a, level]),
                        "upper": float(high[a, level]),
                    }
                )
    return pd.DataFrame(rows)


@functools.partial(jax.jit, static_argnames=("spec",))
def label_log_density(draws: Mapping, spec: ConceptSpec, labels) -> jax.Array:
    """``[n]``: each cell's log posterior predictive density of its labels ``[n, K]``,
    ``log (1/S) sum_s prod_k p(c_k | pa(c_k); draw s)`` over the ``S`` draws of the mechanisms."""

    per_draw = jax.vmap(lambda values: labels_log_prob(values, spec, labels))(dict(draws))
    return jax.nn.logsumexp(per_draw, axis=0) - jnp.log(per_draw.shape[0])


@functools.partial(jax.jit, static_argnames=("spec", "missing", "noise"))
def label_posterior(key, draws, spec, missing, data, encoded, noise) -> list:
    """Per concept of ``missing``, ``[n, L]``: each cell's posterior probability of each level,
    ``P(c | counts, observed labels)``, by importance sampling: per posterior draw ``s`` of the
    globals, the cell's noise ``z_s`` from the encoder ``q``, weights
    ``p(labels = c; s) p(counts | c, z_s; s) p(z_s) / q(z_s)`` over the completions ``c`` of
    its labels (:func:`._program.candidate_levels`), summed over draws."""
    own, rest = encoded["concept_noise"], encoded["unexplained"]
    counts = (noise.observation(data["counts"], data["size_factors"]), data["size_factors"])

    def one(key, values):
        first, second = jax.random.split(key)
        noise_own = own["mean"] + own["scale"] * jax.random.normal(first, own["mean"].shape)
        noise_rest = rest["mean"] + rest["scale"] * jax.random.normal(second, rest["mean"].shape)
        joint = completion_log_joint(
            values,
            spec,
            missing,
            data["labels"],
            (noise_own, noise_rest),
            counts,
            noise,
            noise.parameters_of(values),
        )
        weight = 0.0  # p(z) / q(z) of the encoder's draw
        for value, part in ((noise_own, own), (noise_rest, rest)):
            standard = jax.scipy.stats.norm.logpdf(value).sum(-1)
            proposal = jax.scipy.stats.norm.logpdf(value, part["mean"], part["scale"]).sum(-1)
            weight = weight + standard - proposal
        return joint + weight

    count = next(iter(draws.values())).shape[0]
    # One draw at a time (lax.map): a step holds [C, n, G] log-rates, not S times as many.
    weights = jax.lax.map(lambda pair: one(*pair), (jax.random.split(key, count), dict(draws)))
    combos = jax.nn.softmax(jax.nn.logsumexp(weights, axis=0), axis=0)  # [C, n]
    candidates, _ = candidate_levels(data["labels"], spec, missing)
    return [
        combos.T @ jax.nn.one_hot(candidates[:, 0, concept], spec.sizes[concept])  # [n, L]
        for concept in missing
    ]


def label_shares(key, draws, spec, missing, data, encoded, noise, chunk: int = 256) -> list:
    """:func:`label_posterior` of every cell of ``data``, ``chunk`` cells at a time (memory
    ``C x chunk x genes`` per draw), as NumPy arrays ``[n, L]`` per concept of ``missing``."""
    parts = []
    for start in range(0, data["labels"].shape[0], chunk):
        rows = slice(start, start + chunk)
        cells = {name: data[name][rows] for name in ("labels", "counts", "size_factors")}
        noise_of_cells = jax.tree.map(lambda array, rows=rows: array[rows], encoded)
        parts.append(label_posterior(key, draws, spec, missing, cells, noise_of_cells, noise))
    return [np.concatenate([np.asarray(part[k]) for part in parts]) for k in range(len(missing))]


def mean_embeddings(draws: Mapping, spec: ConceptSpec, labels, encoded) -> dict:
    """Posterior-mean embedding of each concept ``{name: [n, D]}`` (the level's table and the
    spread at their posterior means, the cell's noise at the encoder's mean) and the
    unexplained part's (``"unexplained"``)."""
    own = np.asarray(encoded["concept_noise"]["mean"])
    dimension = own.shape[-1] // len(spec.names)
    result = {}
    for concept, name in enumerate(spec.names):
        table = np.asarray(draws[f"embedding_{name}"]).mean(axis=0)
        spread = float(np.asarray(draws["spread"])[:, concept].mean()) if "spread" in draws else 0.0
        part = own[:, concept * dimension : (concept + 1) * dimension]
        result[name] = table[labels[:, concept]] + spread * part
    result["unexplained"] = np.asarray(encoded["unexplained"]["mean"])
    return result
