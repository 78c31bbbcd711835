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

from causalcell.data import register, to_arrays
from causalcell.diffusion import stationary_moments
from causalcell.inference import default_encoder_inputs, fit
from causalcell.models._lcd_program import condition_interventions, drift_from_sites, lcd_model
from causalcell.noise import NegativeBinomial
from causalcell.perturbations import canonical_label, parse_perturbation
from causalcell.preprocessing import normalize_log1p

__all__ = ["LCD", "UnseenTargetError"]

_PARAMETER_SITE = {
    "shift": "intervention_effect",
    "knockdown": "knockdown_strength",
    "knockout": "knockout_depth",
}


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

    def __init__(self, posterior, registry, intervention: str, library_sizes: np.ndarray):
        self.posterior = posterior
        self.registry = registry
        self.intervention = intervention
        self._library_sizes = library_sizes

    @classmethod
    def fit(
        cls,
        adata,
        *,
        perturbation_key: str = "perturbation",
        control: str = "control",
        layer: str | None = None,
        intervention: str = "shift",
        prior_mask=None,
        num_steps: int = 3000,
        batch_size: int | None = 512,
        learning_rate: float = 0.01,
        key: int = 0,
        progress_bar: bool = True,
        **fit_kwargs,
    ) -> LCD:
        """Register ``adata`` and fit LCD by minibatch SVI with the amortized guide.

        The encoder sees each cell's log1p-normalised counts and its condition (one-hot). The
        step size decays tenfold over the fit. Other keyword arguments go to
        :func:`causalcell.inference.fit` (e.g. ``checkpoint``).
        """
        registry = register(adata, perturbation_key=perturbation_key, control=control, layer=layer)
        arrays = to_arrays(adata, registry)
        fractions = (arrays.counts / arrays.size_factors[:, None]).mean(axis=0)
        conditions = len(registry.conditions)
        data = {
            "counts": arrays.counts,
            "condition_index": arrays.condition_index,
            "condition_targets": arrays.condition_targets.astype(np.float32),
            "size_factors": arrays.size_factors,
            "baseline_prior": np.log(fractions + 1e-6).astype(np.float32),
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
            guide_kwargs={"encoder_inputs": encoder_inputs},
            progress_bar=progress_bar,
            **fit_kwargs,
        )
        return cls(posterior, registry, intervention, arrays.size_factors)

    @property
    def genes(self) -> tuple[str, ...]:
        return self.registry.genes

    @property
    def trained_targets(self) -> frozenset[str]:
        """Genes perturbed (alone or in a combination) in the training cells."""
        return frozenset(self.registry.targets)

    def _targets(self, perturbation: str, allow_prior_only: bool) -> tuple[np.ndarray, bool]:
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
        return row, bool(unseen)

    def _draws(self, key, num_samples: int) -> dict:
        return self.posterior.sample(key, num_samples)

    def _drift_and_interventions(self, draws: dict, targets: np.ndarray):
        """Per-draw drift and the condition's intervention (``targets`` [K, d])."""
        site = _PARAMETER_SITE[self.intervention]

        def one(draw):
            drift = drift_from_sites(
                draw["drift_weights"], draw["log_decay"], draw["log_scaling"], draw["baseline"]
            )
            value = draw[site]
            parameters = {
                "effect": value,
                "log_fraction": -jax.nn.softplus(value),
                "level": draw["baseline"] + value,
            }
            interventions = condition_interventions(
                jnp.asarray(targets), self.intervention, parameters, drift
            )
            return drift, interventions, jnp.exp(draw["log_sigma"])

        return jax.vmap(one)(draws)

    def _laws(self, draws: dict, row: np.ndarray):
        """Per-draw stationary mean, covariance and its Cholesky factor under targets ``row``."""
        drift, interventions, sigma = self._drift_and_interventions(draws, row[None])
        single = jax.tree_util.tree_map(lambda value: value[:, 0], interventions)
        mean, covariance = jax.vmap(stationary_moments)(drift, sigma, single)
        return mean, covariance, jnp.linalg.cholesky(covariance)

    def drift(self, key=0, num_samples: int = 200) -> np.ndarray:
        """Posterior draws of the drift matrix ``[num_samples, d, d]`` (row = target)."""
        draws = self._draws(_key(key), num_samples)
        matrices = jax.vmap(lambda w, a, s, b: drift_from_sites(w, a, s, b).matrix())(
            draws["drift_weights"], draws["log_decay"], draws["log_scaling"], draws["baseline"]
        )
        return np.asarray(matrices)

    def stationary(
        self, perturbation: str, *, key=0, num_samples: int = 200, allow_prior_only: bool = False
    ):
        """Posterior draws of the latent stationary law under ``perturbation``.

        Returns
        -------
        mean, covariance
            ``[num_samples, d]`` and ``[num_samples, d, d]`` (log-expression).
        """
        row, _ = self._targets(perturbation, allow_prior_only)
        mean, covariance, _ = self._laws(self._draws(_key(key), num_samples), row)
        return np.asarray(mean), np.asarray(covariance)

    def predict(
        self,
        perturbations: Sequence[str],
        num_cells: int = 500,
        *,
        key=0,
        allow_prior_only: bool = False,
    ) -> anndata.AnnData:
        """Generate cells under each perturbation (unseen combinations allowed).

        Each cell draws its own posterior parameter set, its latent from the intervened
        stationary law, a library size from the training cells, and counts from the noise model.

        Returns
        -------
        anndata.AnnData
            ``X``: counts (CSR); ``layers["log1p"]``: log1p-normalised; ``obsm["latent"]``;
            ``obs["perturbation"]`` and ``obs["prior_only"]`` (True where a target was never
            perturbed in training).
        """
        key = _key(key)
        rows, flags = zip(
            *(self._targets(label, allow_prior_only) for label in perturbations), strict=True
        )
        blocks, labels, prior_only = [], [], []
        for index, (row, flag) in enumerate(zip(rows, flags, strict=True)):
            draw_key, latent_key, size_key, count_key = jax.random.split(
                jax.random.fold_in(key, index), 4
            )
            draws = self._draws(draw_key, num_cells)
            mean, _, factor = self._laws(draws, row)
            latent = mean + jnp.einsum(
                "cij,cj->ci", factor, jax.random.normal(latent_key, mean.shape)
            )
            sizes = jax.random.choice(size_key, jnp.asarray(self._library_sizes), (num_cells,))
            noise = {"concentration": draws["noise_concentration"]}
            counts = NegativeBinomial().distribution(latent, sizes, **noise).sample(count_key)
            blocks.append(
                (np.asarray(counts, np.float32), np.asarray(latent, np.float32), np.asarray(sizes))
            )
            label = canonical_label(
                parse_perturbation(
                    perturbations[index],
                    control=self.registry.control,
                    separator=self.registry.separator,
                ),
                control=self.registry.control[0],
                separator=self.registry.separator,
            )
            labels += [label] * num_cells
            prior_only += [flag] * num_cells
        counts = np.concatenate([block[0] for block in blocks])
        sizes = np.concatenate([block[2] for block in blocks])
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
        result.layers["log1p"] = normalize_log1p(counts, sizes)
        result.obsm["latent"] = np.concatenate([block[1] for block in blocks])
        return result


def _key(key):
    return jax.random.key(key) if isinstance(key, int) else key
