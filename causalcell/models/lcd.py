"""LCD: latent causal diffusion of a perturbation screen, fitted to an AnnData (DESIGN 3.1).

Linear drift for now (exact Gaussian stationary law; see :mod:`._lcd_program`). The gene
space is the registered genes: every SVI step solves one Lyapunov equation per condition
(``O(conditions d^3)``) and every cell carries a ``d``-dimensional latent, which keeps ``d``
in the low hundreds on a CPU; use highly variable genes for larger screens.

References
----------
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.sparse

from causalcell.clipr import linear_responses, posterior_direct_effects
from causalcell.data import register, to_arrays
from causalcell.inference import default_encoder_inputs, fit
from causalcell.metrics import pseudobulk
from causalcell.models._lcd_guide import lcd_local_posterior
from causalcell.models._lcd_program import condition_laws, lcd_model, linear_drift_from_sites
from causalcell.noise import NegativeBinomial
from causalcell.perturbations import canonical_label, parse_perturbation
from causalcell.preprocessing import normalize_log1p

__all__ = ["LCD", "UnseenTargetError"]


class UnseenTargetError(ValueError):
    """A prediction asks for a target that no training cell carried."""


class LCD:
    """A fitted latent causal diffusion: ``LCD.fit(adata, ...)``, then predict and query.

    Attributes
    ----------
    posterior
        The :class:`causalcell.inference.Posterior` of the fit.
    registry
        The :class:`causalcell.data.Registry` of the training AnnData.
    intervention
        The screen's intervention kind.
    """

    def __init__(
        self, posterior, registry, intervention: str, library_sizes: np.ndarray, prior_mask=None
    ):
        self.posterior = posterior
        self.registry = registry
        self.intervention = intervention
        self._library_sizes = library_sizes
        self._prior_mask = None if prior_mask is None else jnp.asarray(prior_mask, jnp.float32)

    @classmethod
    def fit(
        cls,
        adata,
        *,
        perturbation_key: str = "perturbation",
        control: str = "control",
        layer: str | None = None,
        size_factor_key: str | None = None,
        intervention: str = "shift",
        prior_mask=None,
        num_steps: int = 3000,
        batch_size: int | None = 512,
        learning_rate: float = 0.01,
        key: int = 0,
        progress_bar: bool = True,
        global_guide: str = "normal",
        rank: int | None = None,
        **fit_kwargs,
    ) -> LCD:
        """Register ``adata`` and fit LCD by minibatch SVI with the amortized guide.

        The encoder sees each cell's log1p-normalised counts and its condition (one-hot). The
        step size decays tenfold over the fit. ``global_guide`` picks the posterior family of
        the globals (drift, intervention and noise parameters): ``"normal"`` (mean-field, the
        cheapest), ``"lowrank"`` (with ``rank``) or ``"full"`` (every correlation; the choice for
        calibrated credible intervals of the drift and of CLIPR's direct effects when the
        number of genes is small). Other keyword arguments go to
        :func:`causalcell.inference.fit` (e.g. ``checkpoint``).
        """
        registry = register(
            adata,
            perturbation_key=perturbation_key,
            control=control,
            layer=layer,
            size_factor_key=size_factor_key,
        )
        arrays = to_arrays(adata, registry)
        conditions = len(registry.conditions)
        start = _initial_values(arrays, intervention)
        data = {
            "counts": arrays.counts,
            "condition_index": arrays.condition_index,
            "condition_targets": arrays.condition_targets.astype(np.float32),
            "size_factors": arrays.size_factors,
            "baseline_prior": start["baseline"],
        }
        if prior_mask is not None:
            data["prior_mask"] = np.asarray(prior_mask, np.float32)

        def encoder_inputs(data, index):
            condition = jax.nn.one_hot(data["condition_index"][index], conditions)
            return jnp.concatenate([default_encoder_inputs(data, index), condition], axis=-1)

        schedule = optax.exponential_decay(learning_rate, num_steps, 0.1)
        posterior = fit(
            lcd_model,
            data,
            optimizer=optax.adam(schedule),
            num_steps=num_steps,
            batch_size=batch_size,
            key=key,
            model_kwargs={"intervention": intervention},
            guide_kwargs={
                "encoder_inputs": encoder_inputs,
                "local_posterior": lcd_local_posterior(
                    intervention, _condition_means(arrays.counts, arrays)
                ),
                "init_values": start,
                "global_guide": global_guide,
                "rank": rank,
            },
            progress_bar=progress_bar,
            **fit_kwargs,
        )
        return cls(posterior, registry, intervention, arrays.size_factors, prior_mask)

    @property
    def genes(self) -> tuple[str, ...]:
        return self.registry.genes

    @property
    def trained_targets(self) -> frozenset[str]:
        """Genes perturbed (alone or in a combination) in the training cells."""
        return frozenset(self.registry.targets)

    def _targets(self, perturbation: str, allow_prior_only: bool) -> tuple[np.ndarray, bool, str]:
        """Multi-hot targets of ``perturbation``, whether any is unseen, and its canonical label."""
        members = parse_perturbation(
            perturbation, control=self.registry.control, separator=self.registry.separator
        )
        unknown = [gene for gene in members if gene not in self.genes]
        if unknown:
            raise UnseenTargetError(
                f"{perturbation!r} names genes that are not modelled: {unknown}."
            )
        unseen = [gene for gene in members if gene not in self.trained_targets]
        if unseen and not allow_prior_only:
            raise UnseenTargetError(
                f"{perturbation!r} targets {unseen}, which no training cell carried, so LCD has "
                "learned nothing about their interventions. Pass allow_prior_only=True to predict "
                "from the prior of their intervention parameters (flagged in the output)."
            )
        row = np.isin(np.asarray(self.genes), members)
        label = canonical_label(
            members, control=self.registry.control[0], separator=self.registry.separator
        )
        return row, bool(unseen), label

    def _draws(self, key, num_samples: int) -> dict:
        return self.posterior.sample(key, num_samples)

    def _laws(self, draws: dict, rows: np.ndarray):
        """Per-draw stationary means ``[S, K, d]``, covariances and Cholesky factors under the
        multi-hot targets ``rows`` ``[K, d]``."""
        targets = jnp.asarray(rows, jnp.float32)

        def one(draw):
            _, means, covariances = condition_laws(
                draw, targets, self.intervention, self._prior_mask
            )
            return means, covariances

        mean, covariance = jax.vmap(one)(draws)
        return mean, covariance, jnp.linalg.cholesky(covariance)

    def drift(self, key=0, num_samples: int = 200) -> np.ndarray:
        """Posterior draws of the drift matrix ``[num_samples, d, d]`` (row = target)."""
        draws = self._draws(_key(key), num_samples)

        def one(draw):
            return linear_drift_from_sites(draw, self._prior_mask).matrix()

        return np.asarray(jax.vmap(one)(draws))

    def effects(
        self,
        *,
        targets: Sequence[str] | None = None,
        key=0,
        num_samples: int = 200,
        probability: float = 0.9,
    ):
        """Direct gene-to-gene effects by CLIPR on the fitted drift, with posterior uncertainty.

        Each posterior draw of the drift gives the exact responses ``-A^{-1} e_j`` to unit
        shifts of the ``targets`` (in-silico perturbations), and CLIPR turns them into direct
        effects ``W_ij = A_ij / (-A_ii)`` (:func:`causalcell.clipr.posterior_direct_effects`).

        Parameters
        ----------
        targets
            Genes to perturb in silico; by default the genes perturbed in training, so that
            what is reported as identified is what the screen identifies. Naming other genes
            extrapolates from the model (its prior and the covariance of unperturbed genes).
        key, num_samples
            Seed and number of posterior draws.
        probability
            Mass of the equal-tailed credible intervals.

        Returns
        -------
        causalcell.clipr.DirectEffects
            Mean, intervals, sign probabilities and the identified mask (row = target gene).
        """
        if targets is None:
            targets = [gene for gene in self.genes if gene in self.trained_targets]
        unknown = [gene for gene in targets if gene not in self.genes]
        if unknown:
            raise ValueError(f"effects(targets=...) names genes that are not modelled: {unknown}.")
        columns = [self.genes.index(gene) for gene in targets]
        responses = linear_responses(self.drift(key=key, num_samples=num_samples), columns)
        return posterior_direct_effects(
            responses, genes=list(self.genes), targets=list(targets), probability=probability
        )

    def stationary(
        self, perturbation: str, *, key=0, num_samples: int = 200, allow_prior_only: bool = False
    ):
        """Posterior draws of the latent stationary law under ``perturbation``.

        Returns
        -------
        mean, covariance
            ``[num_samples, d]`` and ``[num_samples, d, d]`` (log-expression).
        """
        row, _, _ = self._targets(perturbation, allow_prior_only)
        mean, covariance, _ = self._laws(self._draws(_key(key), num_samples), row[None])
        return np.asarray(mean[:, 0]), np.asarray(covariance[:, 0])

    def predict(
        self,
        perturbations: Sequence[str],
        num_cells: int = 500,
        *,
        key=0,
        allow_prior_only: bool = False,
    ) -> anndata.AnnData:
        """Generate cells under each perturbation (unseen combinations allowed).

        Generated cell ``c`` of every perturbation uses posterior draw ``c`` (perturbations are
        compared under the same parameter sets); each cell then draws its latent from the
        intervened stationary law, a library size from the training cells, and counts from the
        noise model.

        Returns
        -------
        anndata.AnnData
            ``X``: counts (CSR); ``layers["log1p"]``: log1p of counts normalised by each
            cell's total (as observed cells are evaluated); ``obsm["latent"]``;
            ``obs["perturbation"]`` and ``obs["prior_only"]`` (True where a target was never
            perturbed in training).
        """
        requests = [self._targets(label, allow_prior_only) for label in perturbations]
        rows, flags, names = (list(column) for column in zip(*requests, strict=True))
        draw_key, latent_key, size_key, count_key = jax.random.split(_key(key), 4)
        # Cell c of every perturbation uses posterior draw c: one Lyapunov solve per draw and
        # perturbation, all in one vectorised call.
        draws = self._draws(draw_key, num_cells)
        mean, _, factor = self._laws(draws, np.stack(rows))
        noise = jax.random.normal(latent_key, mean.shape)
        latent = mean + jnp.einsum("ckij,ckj->cki", factor, noise)
        latent = jnp.swapaxes(latent, 0, 1).reshape(-1, len(self.genes))  # perturbation-major
        concentration = jnp.tile(draws["noise_concentration"], (len(rows), 1))
        sizes = jax.random.choice(size_key, jnp.asarray(self._library_sizes), (latent.shape[0],))
        counts = NegativeBinomial().distribution(latent, sizes, concentration=concentration)
        counts = np.asarray(counts.sample(count_key), np.float32)
        sizes = np.asarray(sizes)
        labels = np.repeat(names, num_cells)
        prior_only = np.repeat(flags, num_cells)
        obs = pd.DataFrame(
            {
                "perturbation": pd.Categorical(labels),
                "prior_only": prior_only,
                "size_factor": sizes,
            },
            index=[f"generated{index}" for index in range(counts.shape[0])],
        )
        result = anndata.AnnData(
            X=scipy.sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=list(self.genes))
        )
        # Like the observed cells (scanpy's normalize_total + log1p): each generated cell is
        # normalised by its own total count, not by the library size the model drew.
        result.layers["log1p"] = normalize_log1p(counts, np.maximum(counts.sum(axis=1), 1.0))
        result.obsm["latent"] = np.asarray(latent, np.float32)
        return result


def _condition_means(values, arrays) -> np.ndarray:
    """Mean of ``values`` [cells, d] over the cells of each condition, in registry order."""
    bulk = pseudobulk(values, arrays.condition_index)
    order = [bulk.index_of(str(condition)) for condition in range(len(arrays.condition_targets))]
    return bulk.means[order].astype(np.float32)


def _initial_values(arrays, intervention: str) -> dict:
    """Where the global guide starts: control baseline and per-target effects from pseudobulk.

    Log mean fractions per condition give the control baseline and, for each target, the mean
    change of its own level over the conditions that carry it (shift effect, knockout depth, or
    the knockdown strength whose ``-softplus`` is that change).
    """
    levels = np.log(_condition_means(arrays.counts / arrays.size_factors[:, None], arrays) + 1e-6)
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


def _key(key):
    return jax.random.key(key) if isinstance(key, int) else key
