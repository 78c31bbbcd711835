"""``simulate_screen``: a perturbation screen drawn from a known stationary diffusion."""

from __future__ import annotations

from collections.abc import Sequence

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse

from causalcell import noise as noise_models
from causalcell._core.keys import as_key
from causalcell.datasets._laws import fixed_points, stationary_laws
from causalcell.datasets._regulatory import (
    random_adjacency,
    random_linear_drift,
    random_neural_drift,
)
from causalcell.diffusion import LinearDrift, intervene_linear, simulate_chains
from causalcell.graph import drift_mask, from_adjacency
from causalcell.interventions import Intervention, compose, from_targets
from causalcell.metrics import pseudobulk
from causalcell.perturbations import canonical_label

__all__ = ["simulate_screen"]

#: Default strength per intervention kind: knockout depth below the control level (nats; 3 is
#: a 95% loss), remaining production fraction of a knockdown, and shift of a gene's own level
#: in units of its natural variation scale (nats).
DEFAULT_STRENGTH = {"knockout": 3.0, "knockdown": 0.25, "shift": 1.5}
NOISE_MODELS = {
    "negative_binomial": noise_models.NegativeBinomial,
    "zero_inflated_negative_binomial": noise_models.ZeroInflatedNegativeBinomial,
    "poisson": noise_models.Poisson,
    "gaussian": noise_models.Gaussian,
}
#: Cells simulated together per diffrax call for neural drift (bounds peak memory).
_CHAIN_BLOCK = 2048
#: Cells whose counts are drawn in one call (:func:`_sample_counts`).
_COUNT_BLOCK = 20_000


def simulate_screen(
    num_genes: int = 50,
    num_cells: int = 10_000,
    *,
    drift: str = "linear",
    perturbed_genes: int | Sequence[str] = 10,
    double_perturbations: int | Sequence[str | tuple[str, str]] = 10,
    intervention: str = "knockout",
    strength: float | None = None,
    expected_parents: float = 2.0,
    acyclic: bool = True,
    control_fraction: float = 0.2,
    sigma: float = 0.5,
    noise: str = "negative_binomial",
    library_size: float = 5_000.0,
    library_size_spread: float = 0.3,
    key: int | jax.Array = 0,
    dt: float | None = None,
    burn_in: float | None = None,
) -> anndata.AnnData:
    """Simulate a single-cell perturbation screen with a known causal ground truth.

    Genes follow ``dx = f(x; I) dt + sigma dW`` on a random sparse regulatory graph; each cell
    is an independent draw of the stationary law under its perturbation, observed as counts.

    1. Graph: random sparse DAG (or cyclic graph) with ``expected_parents`` parents per gene.
    2. Drift: linear (``A = -diag(decay) + W``, stable by construction) or neural (a tanh network
       per gene over its parents). Control stationary mean = ``baseline``, the log-fractions of
       a random expression profile (log-normal with unit spread, normalised to sum to one).
    3. Design: single perturbations of ``perturbed_genes`` (by default chosen among genes with
       children, so that they have downstream effects) plus ``double_perturbations`` (pairs of
       perturbed genes). Every target gets an intervention of kind ``intervention``; a double
       composes its members' interventions.
    4. Latents: exact Gaussian draws (linear; Lyapunov covariance) or Euler-Maruyama chains with
       diffrax started at the linearised stationary mean (neural).
    5. Counts: ``noise`` model with mean ``library_size_c * exp(x_cg)``; per-cell library sizes
       are log-normal with log-scale spread ``library_size_spread`` (Gaussian noise: values
       around ``x_cg``, no library size).

    Parameters
    ----------
    num_genes, num_cells
        Size of the screen. ``control_fraction`` of the cells are controls; the rest are split
        evenly over the perturbation conditions.
    drift
        ``"linear"`` or ``"neural"``.
    perturbed_genes
        Number of singly perturbed genes, or their names (``"G007"`` style, see ``var_names``).
    double_perturbations
        Number of random pairs of perturbed genes, or explicit pairs (``("G001", "G004")`` or
        ``"G001+G004"``; members need not be perturbed alone).
    intervention
        ``"knockout"`` (pin at ``baseline - strength``), ``"knockdown"`` (production times a
        fraction drawn uniformly in ``[strength / 2, 3 strength / 2]``), or ``"shift"`` (bias
        lowered by ``decay * u * strength`` with ``u`` uniform in ``[0.5, 1.5]``: random,
        unknown sizes, as in a CRISPRi screen).
    strength
        Kind-specific size; defaults in ``DEFAULT_STRENGTH``.
    expected_parents, acyclic
        Graph density and whether feedback loops are allowed.
    sigma
        Diffusion scale of every gene (stationary standard deviation ~ ``sigma / sqrt(2 decay)``).
    noise
        ``"negative_binomial"`` (per-gene concentration log-normal around 5),
        ``"zero_inflated_negative_binomial"`` (plus a per-gene zero-inflation probability drawn
        uniformly in ``[0.05, 0.3]``), ``"poisson"``, or ``"gaussian"``: continuous values
        ``x + e`` with per-gene scale log-normal around 0.3 and no library size (size factors
        one), like log-scaled cytometry.
    library_size, library_size_spread
        Median library size and its log-normal spread.
    key
        Integer seed or JAX PRNG key: the same key gives the same screen.
    dt, burn_in
        Neural drift only: Euler-Maruyama step (default ``0.05 / max(decay)``) and burn-in time
        (default ``6 / min(decay)``).

    Returns
    -------
    anndata.AnnData
        ``X``: counts (CSR, float32, integer-valued). ``layers["latent"]``: the latent
        log-expression. ``obs["perturbation"]`` (canonical labels, ``"control"`` for controls)
        and ``obs["size_factor"]`` (the true library size). ``var["perturbed"]``.
        ``uns["simulation"]``: the ground truth (graph adjacency with ``[i, j] = 1`` iff
        ``i -> j``, drift parameters, ``drift_matrix`` (the Jacobian at the baseline for neural
        drift), ``sigma``, ``baseline``, the per-condition intervention arrays, targets and their
        intervention values, per-condition stationary means, noise parameters). Rebuild the
        objects with :func:`causalcell.datasets.ground_truth`.

    Raises
    ------
    ValueError
        For unknown options, unknown gene names, or a design with more pairs than exist.

    References
    ----------
    Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
    AISTATS. Dixit, A. et al. (2016). Perturb-seq. Cell 167(7). Norman, T. M. et al. (2019).
    Exploring genetic interaction manifolds constructed from rich single-cell phenotypes.
    Science 365(6455).

    Examples
    --------
    >>> adata = simulate_screen(num_genes=8, num_cells=200, perturbed_genes=3,
    ...                         double_perturbations=1, key=0)
    >>> adata.shape, adata.obs["perturbation"].nunique()
    ((200, 8), 5)
    """
    _check_options(drift, intervention, noise, num_genes, num_cells, control_fraction)
    if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
        seed = int(key)  # a numpy integer seeds as the same Python int does
    else:
        seed = int(jax.random.randint(as_key(key), (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), 3)
    genes = [f"G{index:0{len(str(num_genes - 1))}d}" for index in range(num_genes)]

    adjacency = random_adjacency(rng, num_genes, expected_parents, acyclic=acyclic)
    mask = drift_mask(from_adjacency(adjacency, genes), genes)
    baseline = np.log(_normalised(np.exp(rng.normal(0.0, 1.0, num_genes))))
    if drift == "linear":
        truth = random_linear_drift(rng, mask, baseline)
    else:
        truth = random_neural_drift(rng, mask, baseline)
    decay = np.asarray(truth.decay)

    singles = _choose_singles(rng, perturbed_genes, genes, adjacency)
    doubles = _choose_doubles(rng, double_perturbations, singles, genes)
    conditions = [(), *[(gene,) for gene in singles], *doubles]
    targets = sorted({gene for condition in conditions for gene in condition}, key=genes.index)
    values = _intervention_values(rng, intervention, strength, targets, genes, baseline, decay)
    interventions = _condition_interventions(conditions, values, intervention, genes)
    cell_condition = _allocate_cells(num_cells, len(conditions), control_fraction)

    if drift == "linear":
        latent, means = _linear_latents(keys[0], truth, sigma, interventions, cell_condition)
    else:
        latent = _neural_latents(keys[0], truth, sigma, interventions, cell_condition, dt, burn_in)
        # Cells are allocated in condition order, so pseudobulk rows follow the conditions.
        means = pseudobulk(latent, cell_condition).means

    sizes = library_size * np.exp(rng.normal(0.0, library_size_spread, num_cells))
    if noise == "gaussian":  # continuous data on a log scale: no library size
        sizes = np.ones(num_cells)
    model, parameters = _noise_model(noise, rng, num_genes)
    counts = _sample_counts(keys[1], model, latent, sizes, parameters)

    labels = [canonical_label(condition) for condition in conditions]
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(np.asarray(labels)[cell_condition], categories=labels),
            "size_factor": sizes.astype(np.float32),
        },
        index=[f"cell{index}" for index in range(num_cells)],
    )
    var = pd.DataFrame({"perturbed": np.isin(genes, targets)}, index=genes)
    adata = anndata.AnnData(
        X=counts,
        obs=obs,
        var=var,
        layers={"latent": np.asarray(latent, dtype=np.float32)},
    )
    adata.uns["simulation"] = {
        "drift_kind": drift,
        "drift": {name: np.asarray(value) for name, value in truth._asdict().items()},
        "drift_matrix": _drift_matrix(truth, baseline),
        "graph": adjacency,
        "sigma": np.full(num_genes, sigma, dtype=np.float32),
        "baseline": baseline.astype(np.float32),
        "intervention_kind": intervention,
        "targets": np.asarray(targets, dtype=object),
        "intervention_values": np.asarray([values[gene] for gene in targets], dtype=np.float32),
        "conditions": np.asarray(labels, dtype=object),
        "interventions": {name: np.asarray(v) for name, v in interventions._asdict().items()},
        "stationary_means": np.asarray(means, dtype=np.float32),
        "stationary_means_exact": drift == "linear",
        "noise": noise,
        "noise_parameters": {name: np.asarray(v) for name, v in parameters.items()},
        "seed": seed,
    }
    return adata


def _sample_counts(key, model, latent, sizes, parameters) -> scipy.sparse.csr_matrix:
    """Counts of every cell, :data:`_COUNT_BLOCK` cells at a time (CSR, float32).

    JAX's gamma and Poisson samplers hold several buffers of the whole array while they run:
    in one call, 100,000 cells of 1,000 genes peaked at 16 GB and 150,000 ran out of 24 GB.
    A screen of at most one block draws with ``key`` itself; a larger one draws block ``i``
    with ``fold_in(key, i)``.
    """
    blocks = range(0, len(sizes), _COUNT_BLOCK)
    parts = []
    for number, start in enumerate(blocks):
        rows = slice(start, start + _COUNT_BLOCK)
        block_key = key if len(blocks) == 1 else jax.random.fold_in(key, number)
        law = model.distribution(
            jnp.asarray(latent[rows]), jnp.asarray(sizes[rows], jnp.float32), **parameters
        )
        parts.append(scipy.sparse.csr_matrix(np.asarray(law.sample(block_key), np.float32)))
    return scipy.sparse.vstack(parts, format="csr")


def _check_options(drift, intervention, noise, num_genes, num_cells, control_fraction):
    if drift not in ("linear", "neural"):
        raise ValueError(f"drift must be 'linear' or 'neural', got {drift!r}.")
    if intervention not in DEFAULT_STRENGTH:
        raise ValueError(
            f"intervention must be one of {sorted(DEFAULT_STRENGTH)}, got {intervention!r}."
        )
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {sorted(NOISE_MODELS)}, got {noise!r}.")
    if num_genes < 2 or num_cells < 1:
        raise ValueError(f"Need at least 2 genes and 1 cell, got {num_genes} and {num_cells}.")
    if not 0.0 < control_fraction < 1.0:
        raise ValueError(f"control_fraction must lie in (0, 1), got {control_fraction}.")


def _normalised(values):
    return values / values.sum()


def _unknown(names, genes):
    missing = [name for name in names if name not in genes]
    if missing:
        raise ValueError(
            f"Unknown gene names {missing}; simulated genes are named {genes[0]!r}..{genes[-1]!r}."
        )


def _choose_singles(rng, perturbed_genes, genes, adjacency):
    if not isinstance(perturbed_genes, int):
        _unknown(list(perturbed_genes), genes)
        return list(dict.fromkeys(perturbed_genes))
    if not 0 <= perturbed_genes <= len(genes):
        raise ValueError(f"perturbed_genes={perturbed_genes} is not in [0, {len(genes)}].")
    # Regulators (genes with children) first, in random order, then the rest.
    order = rng.permutation(len(genes))
    has_children = adjacency.sum(axis=1)[order] > 0
    ranked = np.concatenate([order[has_children], order[~has_children]])
    return [genes[index] for index in sorted(ranked[:perturbed_genes])]


def _choose_doubles(rng, double_perturbations, singles, genes):
    if not isinstance(double_perturbations, int):
        pairs = [
            tuple(sorted(pair.split("+") if isinstance(pair, str) else pair))
            for pair in double_perturbations
        ]
        _unknown([gene for pair in pairs for gene in pair], genes)
        if any(len(set(pair)) != 2 for pair in pairs):
            raise ValueError(f"Each double perturbation needs two distinct genes, got {pairs}.")
        return list(dict.fromkeys(pairs))
    available = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    if double_perturbations > len(available):
        raise ValueError(
            f"{double_perturbations} double perturbations requested, but {len(singles)} perturbed "
            f"genes only make {len(available)} pairs; perturb more genes or ask for fewer pairs."
        )
    chosen = rng.choice(len(available), size=double_perturbations, replace=False)
    return [available[index] for index in sorted(chosen)]


def _intervention_values(rng, kind, strength, targets, genes, baseline, decay):
    size = DEFAULT_STRENGTH[kind] if strength is None else float(strength)
    index = np.array([genes.index(gene) for gene in targets], dtype=int)
    if kind == "knockout":
        values = baseline[index] - size
    elif kind == "knockdown":
        values = np.clip(rng.uniform(0.5 * size, 1.5 * size, index.size), 1e-3, 1.0)
    else:
        values = -decay[index] * size * rng.uniform(0.5, 1.5, index.size)
    return dict(zip(targets, values.astype(np.float32), strict=True))


def _condition_interventions(conditions, values, kind, genes) -> Intervention:
    rows = []
    for condition in conditions:
        combined = Intervention.identity(len(genes))
        for gene in condition:
            member = from_targets(len(genes), [genes.index(gene)], kind, values[gene])
            combined = compose(combined, member)
        rows.append(combined)
    return jax.tree_util.tree_map(lambda *fields: jnp.stack(fields), *rows)


def _allocate_cells(num_cells, num_conditions, control_fraction):
    if num_conditions == 1:
        return np.zeros(num_cells, dtype=np.int32)
    controls = max(1, round(control_fraction * num_cells))
    per_condition = np.full(num_conditions - 1, (num_cells - controls) // (num_conditions - 1))
    per_condition[: (num_cells - controls) % (num_conditions - 1)] += 1
    if per_condition.min() < 1:
        raise ValueError(
            f"{num_cells} cells cannot cover {num_conditions - 1} perturbation conditions; "
            "simulate more cells or fewer perturbations."
        )
    return np.repeat(np.arange(num_conditions, dtype=np.int32), [controls, *per_condition])


def _linear_latents(key, drift: LinearDrift, sigma, interventions, cell_condition):
    """Exact Gaussian draws: ``mean_p + L_p z`` with one standard normal ``z`` per cell."""
    standard = np.asarray(jax.random.normal(key, (cell_condition.size, drift.num_genes)))
    means, factors, law_of = stationary_laws(drift, sigma, interventions)
    if not np.isfinite(factors).all():
        raise ValueError(
            "A simulated condition has no stationary law (unstable drift); please report this "
            "with the arguments of simulate_screen."
        )
    latent = np.empty_like(standard)
    for index, (mean, law) in enumerate(zip(means, law_of, strict=True)):
        rows = cell_condition == index
        latent[rows] = mean + standard[rows] @ factors[law].T
    return latent, means


def _neural_latents(key, drift, sigma, interventions, cell_condition, dt, burn_in):
    decay = np.asarray(drift.decay)
    dt = 0.05 / decay.max() if dt is None else dt
    burn_in = 6.0 / decay.min() if burn_in is None else burn_in
    # Start each chain at the stationary mean of the drift linearised at the baseline, under
    # the chain's intervention, plus independent noise of the right scale.
    linear = drift.linearize(drift.center)
    matrices, biases, _ = intervene_linear(linear, sigma, interventions)
    start_means = fixed_points(np.asarray(matrices, np.float64), np.asarray(biases, np.float64))
    spread = sigma / np.sqrt(2.0 * decay)
    run = jax.jit(
        lambda k, initial, member: simulate_chains(
            k, drift, sigma, initial, intervention=member, dt=float(dt), burn_in=float(burn_in)
        )[:, 0]
    )
    latent = np.empty((cell_condition.size, drift.num_genes), dtype=np.float32)
    for block, block_key in zip(
        range(0, cell_condition.size, _CHAIN_BLOCK),
        jax.random.split(key, -(-cell_condition.size // _CHAIN_BLOCK)),
        strict=True,
    ):
        rows = np.arange(block, block + _CHAIN_BLOCK) % cell_condition.size
        chain_conditions = cell_condition[rows]
        member = jax.tree_util.tree_map(
            lambda field, index=chain_conditions: field[index], interventions
        )
        start_key, chain_key = jax.random.split(block_key)
        initial = start_means[chain_conditions] + spread * jax.random.normal(
            start_key, (rows.size, drift.num_genes)
        )
        samples = np.asarray(run(chain_key, initial, member))
        keep = rows[: min(_CHAIN_BLOCK, cell_condition.size - block)]
        latent[keep] = samples[: keep.size]
    return latent


def _drift_matrix(truth, baseline):
    if isinstance(truth, LinearDrift):
        return np.asarray(truth.matrix())
    return np.asarray(truth.linearize(jnp.asarray(baseline, jnp.float32)).matrix())


def _noise_model(name, rng, num_genes):
    parameters = {}
    if name == "gaussian":
        scale = np.exp(rng.normal(np.log(0.3), 0.3, num_genes))
        return NOISE_MODELS[name](), {"scale": jnp.asarray(scale, jnp.float32)}
    if name != "poisson":
        parameters["concentration"] = jnp.asarray(
            np.exp(rng.normal(np.log(5.0), 0.5, num_genes)), jnp.float32
        )
    if name == "zero_inflated_negative_binomial":
        gate = rng.uniform(0.05, 0.3, num_genes)
        parameters["gate_logits"] = jnp.asarray(np.log(gate / (1 - gate)), jnp.float32)
    return NOISE_MODELS[name](), parameters
