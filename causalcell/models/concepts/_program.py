"""The causal concept model as a NumPyro program: concept labels from a Gumbel-max SCM over the
concept DAG, one embedding per concept next to an unexplained part, counts from a decoder.

Per cell ``i`` with levels ``c_i`` (``K`` concepts):

- labels: ``c_ik ~ Categorical(softmax(b_k + sum_{p in pa(k)} W_pk[c_ip]))`` (:mod:`._scm`;
  sites ``bias_<concept>`` ``[L_k]`` and ``weight_<parent>_<child>`` ``[L_p, L_k]``, both
  ``N(0, 2^2)``: the mechanisms have posteriors);
- embeddings: ``e_ik = E_k[c_ik] + s_k u_ik`` with ``u_ik ~ N(0, I_D)`` the cell's own
  (exogenous) variation within its level (sites ``embedding_<concept>`` ``[L_k, D]`` ``N(0, 1)``,
  ``spread`` ``[K]`` log-normal, per-cell ``concept_noise`` ``[K D]``);
- unexplained part ``h_i ~ N(0, I_U)`` (per-cell ``unexplained``), independent of every concept
  a priori;
- log-rates ``baseline + f([e_i1, ..., e_iK, h_i])`` with ``f`` a one-hidden-layer tanh network
  (``hidden > 0``) or linear (``hidden = 0``); counts through a noise model with size factors
  (negative binomial by default).

A counterfactual of cell ``i`` keeps ``u_i``, ``h_i`` and its abducted Gumbel noise and changes
levels (:func:`._scm.intervene`), so an intervention on a parent concept moves its children
exactly as far as the cell's own noise allows, and the decoded change is the cell's own.

References
----------
Kingma, D. P., Rezende, D. J., Mohamed, S. & Welling, M. (2014). Semi-supervised learning with
deep generative models. NeurIPS.
Gao, S. et al. (2025). Causal disentanglement of single-cell concepts (CausCell). Nature
Communications.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from causalcell.models.concepts._scm import ConceptSpec, labels_log_prob, mechanism_logits
from causalcell.noise import NOISE_MODELS, NoiseModel

__all__ = [
    "BASELINE_SCALE",
    "DECODER_SITES",
    "MAX_COMBINATIONS",
    "candidate_levels",
    "completion_log_joint",
    "concept_embeddings",
    "concept_model",
    "decode",
    "decoder_features",
]

#: Prior scale of the mechanisms' logits.
MECHANISM_SCALE = 2.0
#: Prior median of each concept's within-level spread (the embedding tables have scale 1).
SPREAD_MEDIAN = 0.3
#: Sites of the decoder (estimated as points by default, as a VAE's decoder).
DECODER_SITES = ("decoder_hidden", "decoder_bias", "decoder_out", "baseline")
#: Prior scale of each gene's baseline about the log mean count (the output weights' is
#: ``1 / sqrt(width)``, width the number of features they read).
BASELINE_SCALE = 2.0


def concept_model(
    labels,
    counts=None,
    size_factors=None,
    log_mean=None,
    *,
    spec: ConceptSpec,
    num_genes: int,
    dimension: int = 8,
    unexplained: int = 8,
    hidden: int = 128,
    noise: NoiseModel = NOISE_MODELS["negative_binomial"],
    own_noise: bool = True,
    missing: tuple[int, ...] = (),
):
    """The program (module docstring) over ``labels`` ``[n, K]`` (level codes, concepts in
    ``spec`` order), ``counts`` ``[n, G]`` (``None``: simulated) and ``size_factors`` ``[n]``;
    ``log_mean`` ``[G]`` centres the baseline's prior (log mean count per unit size factor).
    ``own_noise=False`` drops the cells' own variation within a level (no ``spread`` site: each
    concept's embedding is its level's, as one-hot covariates of a conditional VAE).

    ``missing``: the concepts some cells lack a label of (code ``-1``). Their levels are summed
    out exactly, cell by cell: the joint of labels and counts is a factor
    ``log sum_c p(labels = c) p(counts | c)`` over the combinations ``c`` of those concepts'
    levels that agree with the cell's observed labels (:func:`candidate_levels`), so a step
    decodes every cell once per combination."""
    values = mechanism_sites(spec)
    for name, size in zip(spec.names, spec.sizes, strict=True):
        values[f"embedding_{name}"] = numpyro.sample(
            f"embedding_{name}", dist.Normal(0.0, 1.0).expand([size, dimension]).to_event(2)
        )
    if own_noise:
        values["spread"] = numpyro.sample(
            "spread",
            dist.LogNormal(jnp.log(SPREAD_MEDIAN), 1.0).expand([len(spec.names)]).to_event(1),
        )
    centre = jnp.zeros(num_genes) if log_mean is None else jnp.asarray(log_mean)
    values.update(decoder_sites(len(spec.names) * dimension + unexplained, hidden, centre))
    parameters = noise.sample_parameters(num_genes)
    width = len(spec.names) * dimension
    with numpyro.plate("cells", labels.shape[0]) as index:
        levels = labels[index]
        sizes = jnp.ones(labels.shape[0])[index] if size_factors is None else size_factors[index]
        observed = None if counts is None else noise.observation(counts[index], sizes)
        own = numpyro.sample("concept_noise", dist.Normal(0.0, 1.0).expand([width]).to_event(1))
        rest = numpyro.sample(
            "unexplained", dist.Normal(0.0, 1.0).expand([unexplained]).to_event(1)
        )
        if missing:
            joint = completion_log_joint(
                values, spec, missing, levels, (own, rest), (observed, sizes), noise, parameters
            )
            numpyro.factor("labels_and_counts", jax.nn.logsumexp(joint, axis=0))
            return
        for concept, name in enumerate(spec.names):
            logits = mechanism_logits(values, spec, concept, levels)
            numpyro.sample(f"label_{name}", dist.Categorical(logits=logits), obs=levels[:, concept])
        log_rate = decode(values, concept_embeddings(values, spec, levels, own), rest)
        likelihood = noise.distribution(log_rate, sizes, **parameters)
        numpyro.sample("counts", likelihood.to_event(1), obs=observed)


#: Most level combinations of the concepts with missing labels that a fit sums out per cell.
MAX_COMBINATIONS = 64


def completion_log_joint(values, spec, missing, levels, noise_of_cells, counts, noise, parameters):
    """``[C, n]``: for every completion ``c`` of the cells' levels over the concepts
    ``missing`` (:func:`candidate_levels`), ``log p(labels = c) + log p(counts | c)`` given the
    cells' noise ``(own, rest)`` and ``counts`` ``(observed, size factors)`` (``-inf`` where
    ``c`` disagrees with an observed label)."""
    own, rest = noise_of_cells
    observed, sizes = counts
    candidates, valid = candidate_levels(levels, spec, missing)
    log_rate = decode(values, concept_embeddings(values, spec, candidates, own), rest)
    likelihood = noise.distribution(log_rate, sizes, **parameters).to_event(1)
    joint = labels_log_prob(values, spec, candidates) + likelihood.log_prob(observed)
    return jnp.where(valid, joint, -jnp.inf)


def candidate_levels(levels, spec: ConceptSpec, missing: tuple[int, ...]):
    """Every completion ``[C, n, K]`` of cells' levels ``[n, K]`` over the joint levels of the
    concepts ``missing`` (``C`` their product), and which agree with each cell's observed
    labels ``[C, n]`` (a missing label, ``-1``, agrees with every level)."""
    grids = np.meshgrid(*(np.arange(spec.sizes[k]) for k in missing), indexing="ij")
    combos = np.stack([grid.ravel() for grid in grids], axis=-1)  # [C, |missing|]
    candidates = jnp.broadcast_to(levels, (combos.shape[0], *levels.shape))
    valid = jnp.ones(candidates.shape[:2], bool)
    for position, concept in enumerate(missing):
        value = jnp.asarray(combos[:, position])[:, None]
        valid = valid & ((levels[:, concept] < 0) | (levels[:, concept] == value))
        candidates = candidates.at[..., concept].set(jnp.broadcast_to(value, candidates.shape[:2]))
    return candidates, valid


def mechanism_sites(spec: ConceptSpec) -> dict:
    """Sample the mechanisms' logit tables (``bias_<concept>``, ``weight_<parent>_<child>``)."""
    values = {}
    for concept, (name, size) in enumerate(zip(spec.names, spec.sizes, strict=True)):
        values[spec.bias_site(name)] = numpyro.sample(
            spec.bias_site(name), dist.Normal(0.0, MECHANISM_SCALE).expand([size]).to_event(1)
        )
        for parent in spec.parents[concept]:
            site = spec.weight_site(spec.names[parent], name)
            shape = [spec.sizes[parent], size]
            values[site] = numpyro.sample(
                site, dist.Normal(0.0, MECHANISM_SCALE).expand(shape).to_event(2)
            )
    return values


def decoder_sites(inputs: int, hidden: int, centre) -> dict:
    """Sample the decoder: ``[inputs, hidden]`` and ``[hidden]`` of the tanh layer and
    ``[hidden, G]`` out (or ``[inputs, G]`` when ``hidden = 0``), and the ``baseline``."""
    genes = centre.shape[0]
    width = hidden or inputs
    values = {}
    if hidden:
        values["decoder_hidden"] = numpyro.sample(
            "decoder_hidden",
            dist.Normal(0.0, 1.0 / jnp.sqrt(inputs)).expand([inputs, hidden]).to_event(2),
        )
        values["decoder_bias"] = numpyro.sample(
            "decoder_bias", dist.Normal(0.0, 1.0).expand([hidden]).to_event(1)
        )
    values["decoder_out"] = numpyro.sample(
        "decoder_out", dist.Normal(0.0, 1.0 / jnp.sqrt(width)).expand([width, genes]).to_event(2)
    )
    values["baseline"] = numpyro.sample("baseline", dist.Normal(centre, BASELINE_SCALE).to_event(1))
    return values


def concept_embeddings(values, spec: ConceptSpec, levels, own) -> jnp.ndarray:
    """``[..., K D]``: each concept's level embedding plus its spread times the cell's own
    ``own`` ``[..., K D]`` noise (none without a ``spread`` site), concepts in ``spec`` order."""
    parts = []
    dimension = own.shape[-1] // len(spec.names)
    for concept, name in enumerate(spec.names):
        table = values[f"embedding_{name}"]
        noise = own[..., concept * dimension : (concept + 1) * dimension]
        part = table[levels[..., concept]]
        if "spread" in values:
            part = part + values["spread"][concept] * noise
        parts.append(part)
    return jnp.concatenate(parts, axis=-1)


def decoder_features(values, embeddings, rest) -> jnp.ndarray:
    """What the decoder's output layer reads ``[..., W]``: the hidden layer's activations, or
    the inputs themselves (concept embeddings then the unexplained part, broadcast over the
    embeddings' leading axes) for a linear decoder."""
    rest = jnp.broadcast_to(rest, (*embeddings.shape[:-1], rest.shape[-1]))
    inputs = jnp.concatenate([embeddings, rest], axis=-1)
    if "decoder_hidden" in values:
        inputs = jnp.tanh(inputs @ values["decoder_hidden"] + values["decoder_bias"])
    return inputs


def decode(values, embeddings, rest) -> jnp.ndarray:
    """Log-rates ``[..., G]`` from the concept embeddings and the unexplained part: the
    ``baseline`` plus the output layer applied to :func:`decoder_features`."""
    return values["baseline"] + decoder_features(values, embeddings, rest) @ values["decoder_out"]
