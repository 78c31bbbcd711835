"""LCD: latent causal diffusion of a perturbation screen, fitted to an AnnData (DESIGN 3.1).

Linear drift: exact Gaussian stationary law (see :mod:`._lcd_program`). Gene space: a screen
of at most 64 genes models every gene as a latent coordinate, and every SVI step solves one
Lyapunov equation per condition (``O(conditions d^3)``). Larger screens work by default in a
reduced space (:mod:`._lcd_decoder`): the perturbed genes (plus any chosen or highly variable
ones) and ``k = 8`` latent programs are the state, and every other gene is decoded linearly
from it, at ``O(conditions m^3 + batch genes m)`` per step for ``m = modelled + k``.

Neural drift (``LCD.fit(..., drift="neural")``): the KDS program of :mod:`._lcd_neural` on
every gene (no reduced space); predictions, stationary laws and effects simulate or linearise
the fitted SDE (:mod:`._lcd_neural_fit`, :mod:`._lcd_neural_queries`, which state the choices).

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

from causalcell._linalg import cholesky
from causalcell.clipr import linear_responses, posterior_direct_effects
from causalcell.data import register, to_arrays
from causalcell.inference import default_encoder_inputs, fit
from causalcell.metrics import pseudobulk
from causalcell.models._lcd_decoder import (
    GeneSpace,
    choose_gene_space,
    decoder_init_scales,
    reduce_programs,
)
from causalcell.models._lcd_guide import lcd_local_posterior
from causalcell.models._lcd_neural_fit import fit_neural
from causalcell.models._lcd_neural_queries import (
    control_jacobians,
    neural_responses,
    predict_neural,
    stationary_neural,
)
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
    space
        The :class:`._lcd_decoder.GeneSpace`: modelled genes and number of programs.
    drift_kind
        ``"linear"`` or ``"neural"``: the drift family that was fitted.
    """

    def __init__(
        self,
        posterior,
        registry,
        intervention: str,
        library_sizes: np.ndarray,
        prior_mask=None,
        space: GeneSpace | None = None,
        drift: str = "linear",
    ):
        self.posterior = posterior
        self.drift_kind = drift
        self.registry = registry
        self.intervention = intervention
        self._library_sizes = library_sizes
        # In latent coordinates (modelled genes, then programs); the gene mask in a full space.
        self._prior_mask = None if prior_mask is None else jnp.asarray(prior_mask, jnp.float32)
        genes = registry.genes
        self.space = space or GeneSpace(genes, np.arange(len(genes)), 0)

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
        global_guide: str = "auto",
        rank: int | None = None,
        modelled_genes: str | int | Sequence[str] | None = None,
        programs: int | None = None,
        drift: str = "linear",
        drift_options: dict | None = None,
        **fit_kwargs,
    ) -> LCD:
        """Register ``adata`` and fit LCD by minibatch SVI with the amortized guide.

        The encoder sees each cell's log1p-normalised counts and its condition (one-hot). The
        step size decays tenfold over the fit. ``global_guide`` picks the posterior family of
        the globals (drift, intervention and noise parameters): ``"full"`` (every correlation;
        needed for credible intervals of the drift and of CLIPR's direct effects that cover),
        ``"lowrank"`` (with ``rank``), ``"normal"`` (mean-field, cheapest, intervals 2-3x too
        narrow) or ``"auto"``: ``"full"`` while the globals have at most
        :data:`causalcell.inference.FULL_RANK_LIMIT` dimensions (about 20 genes), else
        ``"normal"``. Other keyword arguments go to
        :func:`causalcell.inference.fit` (e.g. ``checkpoint``).

        The gene space (:mod:`._lcd_decoder`): ``modelled_genes`` are latent coordinates and
        ``programs`` latent programs follow them; every other gene is decoded linearly from
        that state. Perturbed genes are always modelled. ``modelled_genes=None`` models every
        gene of a screen of at most 64 genes (the full model) and only the perturbed genes of
        a larger one; ``"all"`` models every gene; a number ``n`` adds the ``n`` most
        variable other genes (variance of log1p-normalised expression); a list adds those
        genes. ``programs=None`` gives 0 when every gene is modelled, else 8. The cost of a
        step grows with the cube of ``m = modelled + programs`` and linearly in the genes.

        ``drift="neural"`` fits the neural-drift program (:func:`._lcd_neural.lcd_neural_model`,
        KDS factor, per-condition Gaussian latent base) on every gene (``modelled_genes``
        defaults to ``"all"``; a reduced space raises), with the amortized guide of
        :func:`._lcd_neural_fit.fit_neural`; ``drift_options`` are that program's keyword
        arguments (``hidden``, ``weight_scale``, ``kds_weight``). Its memory grows as
        ``d^2 hidden`` per cell of a batch, so keep ``d`` in the tens.
        """
        if drift not in ("linear", "neural"):
            raise ValueError(f"drift must be 'linear' or 'neural', got {drift!r}.")
        if drift == "linear" and drift_options:
            raise ValueError("drift_options are options of drift='neural' only.")
        if drift == "neural" and modelled_genes is None:
            modelled_genes = "all"  # the neural program has no decoder
        registry = register(
            adata,
            perturbation_key=perturbation_key,
            control=control,
            layer=layer,
            size_factor_key=size_factor_key,
        )
        arrays = to_arrays(adata, registry)
        space = choose_gene_space(arrays, registry.targets, modelled_genes, programs)
        arrays = space.reorder(arrays)  # columns: modelled genes, then decoded genes
        conditions = len(registry.conditions)
        start = space.latent_values(_initial_values(arrays, intervention), arrays)
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

        def encoder_inputs(data, index):
            condition = jax.nn.one_hot(data["condition_index"][index], conditions)
            return jnp.concatenate([default_encoder_inputs(data, index), condition], axis=-1)

        schedule = optax.exponential_decay(learning_rate, num_steps, 0.1)
        if drift == "neural":
            posterior = fit_neural(
                data,
                encoder_inputs,
                space=space,
                intervention=intervention,
                initial_values=start,
                guide_options={"global_guide": global_guide, "rank": rank},
                model_options=drift_options,
                optimizer=optax.adam(schedule),
                num_steps=num_steps,
                batch_size=batch_size,
                key=key,
                progress_bar=progress_bar,
                **fit_kwargs,
            )
            sizes = arrays.size_factors
            return cls(posterior, registry, intervention, sizes, prior_mask, space, drift)
        init_scales = None
        if not space.is_full and global_guide in ("auto", "normal"):
            # Thousands of decoder globals: mean-field, with the decoder's posterior scales
            # starting near a point estimate (see _lcd_decoder.DECODER_INIT_SCALE).
            global_guide, init_scales = "normal", decoder_init_scales()
        posterior = fit(
            lcd_model,
            data,
            optimizer=optax.adam(schedule),
            num_steps=num_steps,
            batch_size=batch_size,
            key=key,
            model_kwargs={"intervention": intervention, "programs": space.programs},
            guide_kwargs={
                "encoder_inputs": encoder_inputs,
                "local_posterior": lcd_local_posterior(
                    intervention,
                    _condition_means(arrays.counts, arrays),
                    space.programs,
                    None if space.is_full else _condition_rates(arrays),
                ),
                "init_values": start,
                "global_guide": global_guide,
                "rank": rank,
                "init_scales": init_scales,
            },
            progress_bar=progress_bar,
            **fit_kwargs,
        )
        return cls(posterior, registry, intervention, arrays.size_factors, prior_mask, space)

    @property
    def genes(self) -> tuple[str, ...]:
        """Every gene of the training AnnData (all of them are predicted)."""
        return self.registry.genes

    @property
    def modelled_genes(self) -> tuple[str, ...]:
        """Genes that are coordinates of the latent state (the genes of drift and effects)."""
        return self.space.modelled_genes

    @property
    def coordinates(self) -> tuple[str, ...]:
        """Names of the latent coordinates: modelled genes, then ``program1`` .. ``programk``."""
        return self.space.coordinates

    @property
    def trained_targets(self) -> frozenset[str]:
        """Genes perturbed (alone or in a combination) in the training cells."""
        return frozenset(self.registry.targets)

    def _targets(self, perturbation: str, allow_prior_only: bool) -> tuple[np.ndarray, bool, str]:
        """Multi-hot targets of ``perturbation`` over the latent coordinates, whether any is
        unseen, and its canonical label."""
        members = parse_perturbation(
            perturbation, control=self.registry.control, separator=self.registry.separator
        )
        unknown = [gene for gene in members if gene not in self.genes]
        if unknown:
            raise UnseenTargetError(
                f"{perturbation!r} names genes that are not modelled: {unknown}."
            )
        decoded = [gene for gene in members if gene not in self.modelled_genes]
        if decoded:
            raise UnseenTargetError(
                f"{perturbation!r} targets {decoded}, which are not modelled (they are decoded "
                "from the latent state, so no intervention can act on them). Refit with "
                "LCD.fit(..., modelled_genes=[...]) naming them."
            )
        unseen = [gene for gene in members if gene not in self.trained_targets]
        if unseen and not allow_prior_only:
            raise UnseenTargetError(
                f"{perturbation!r} targets {unseen}, which no training cell carried, so LCD has "
                "learned nothing about their interventions. Pass allow_prior_only=True to predict "
                "from the prior of their intervention parameters (flagged in the output)."
            )
        row = np.isin(np.asarray(self.modelled_genes), members)
        row = np.concatenate([row, np.zeros(self.space.programs, bool)])  # programs: untargeted
        label = canonical_label(
            members, control=self.registry.control[0], separator=self.registry.separator
        )
        return row, bool(unseen), label

    def _draws(self, key, num_samples: int) -> dict:
        return self.posterior.sample(key, num_samples)

    def _laws(self, draws: dict, rows: np.ndarray):
        """Per-draw stationary means ``[S, K, m]``, covariances and Cholesky factors of the
        latent state under the multi-hot targets ``rows`` ``[K, m]``."""
        targets = jnp.asarray(rows, jnp.float32)

        def one(draw):
            _, means, covariances = condition_laws(
                draw, targets, self.intervention, self._prior_mask
            )
            return means, covariances

        mean, covariance = jax.vmap(one)(draws)
        return mean, covariance, cholesky(covariance)

    def drift(self, key=0, num_samples: int = 200, *, programs: bool = False) -> np.ndarray:
        """Posterior draws of the drift matrix among modelled genes ``[num_samples, n, n]``
        (row = target; genes :attr:`modelled_genes`).

        With latent programs, this is the drift of the modelled genes with the programs as
        unmeasured mediators, the Schur complement ``A_MM - A_MP A_PP^{-1} A_PM``
        (:func:`._lcd_decoder.reduce_programs`): it has the same stationary responses of
        modelled genes to their shifts as the whole system. ``programs=True`` returns the drift
        of the whole latent state ``[num_samples, m, m]`` instead (coordinates
        :attr:`coordinates`).

        Neural drift has no matrix: this returns its Jacobians at the control fixed point
        (``baseline``, where the noise-free control drift vanishes), the linear drift that
        governs small perturbations of the control state (and the one :meth:`effects` uses).
        """
        draws = self._draws(_key(key), num_samples)
        if self.drift_kind == "neural":
            return np.asarray(control_jacobians(draws, self._prior_mask))
        reduced = 0 if programs else self.space.programs

        def one(draw):
            matrix = linear_drift_from_sites(draw, self._prior_mask).matrix()
            return reduce_programs(matrix, reduced)

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
        Effects are among the modelled genes; with latent programs, CLIPR sees the responses of
        modelled genes only, so it returns the direct effects of the reduced drift
        (:meth:`drift`), in which regulation carried through a program counts as direct, as it
        would for any unmeasured mediator. For neural drift the responses are those of the
        drift linearised at the control fixed point (small in-silico shifts,
        :func:`causalcell.clipr.linearized_responses`), so the effects are the Jacobian's
        ``J_ij / (-J_ii)``; draws not stable there are left out with a warning.

        Parameters
        ----------
        targets
            Modelled genes to perturb in silico; by default the genes perturbed in training, so
            that what is reported as identified is what the screen identifies. Naming other
            genes extrapolates from the model (its prior and the covariance of unperturbed
            genes).
        key, num_samples
            Seed and number of posterior draws.
        probability
            Mass of the equal-tailed credible intervals.

        Returns
        -------
        causalcell.clipr.DirectEffects
            Mean, intervals, sign probabilities and the identified mask (row = target gene).
        """
        genes = self.modelled_genes
        if targets is None:
            targets = [gene for gene in genes if gene in self.trained_targets]
        unknown = [gene for gene in targets if gene not in genes]
        if unknown:
            raise ValueError(f"effects(targets=...) names genes that are not modelled: {unknown}.")
        columns = [genes.index(gene) for gene in targets]
        if self.drift_kind == "neural":  # linearised at the control fixed point
            draws = self._draws(_key(key), num_samples)
            responses = neural_responses(draws, self._prior_mask, columns)
        else:
            responses = linear_responses(self.drift(key=key, num_samples=num_samples), columns)
        return posterior_direct_effects(
            responses, genes=list(genes), targets=list(targets), probability=probability
        )

    def stationary(
        self,
        perturbation: str,
        *,
        key=0,
        num_samples: int = 200,
        allow_prior_only: bool = False,
        **simulation,
    ):
        """Posterior draws of the latent stationary law under ``perturbation``.

        For neural drift the law has no closed form and is not Gaussian: the mean and
        covariance of each draw are Monte Carlo estimates from simulated chains
        (:func:`._lcd_neural_queries.stationary_neural`; ``simulation`` takes its ``chains`` per
        draw, default 100, ``dt`` and ``burn_in``); samples of the law itself are
        :meth:`predict`'s ``obsm["latent"]``.

        Returns
        -------
        mean, covariance
            ``[num_samples, m]`` and ``[num_samples, m, m]`` over :attr:`coordinates`: the
            modelled genes' log-expression, then the programs (every gene in a full space).
        """
        row, _, _ = self._targets(perturbation, allow_prior_only)
        if self.drift_kind == "neural":
            return stationary_neural(
                self, row, key=_key(key), num_samples=num_samples, **simulation
            )
        if simulation:
            raise TypeError(f"Simulation options {sorted(simulation)} need drift='neural'.")
        mean, covariance, _ = self._laws(self._draws(_key(key), num_samples), row[None])
        return np.asarray(mean[:, 0]), np.asarray(covariance[:, 0])

    def predict(
        self,
        perturbations: Sequence[str],
        num_cells: int = 500,
        *,
        key=0,
        allow_prior_only: bool = False,
        **simulation,
    ) -> anndata.AnnData:
        """Generate cells under each perturbation (unseen combinations allowed).

        Generated cell ``c`` of every perturbation uses posterior draw ``c`` (perturbations are
        compared under the same parameter sets); each cell then draws its latent from the
        intervened stationary law, a library size from the training cells, and counts from the
        noise model. For neural drift the latent is the end of a simulated chain of the
        intervened SDE, all chains in one diffrax solve
        (:func:`._lcd_neural_queries.predict_neural`; ``simulation`` may set ``dt`` and
        ``burn_in``).

        Returns
        -------
        anndata.AnnData
            ``X``: counts of every gene of the training AnnData, in its order (CSR);
            ``layers["log1p"]``: log1p of counts normalised by each cell's total (as observed
            cells are evaluated); ``obsm["latent"]``: the latent state over
            :attr:`coordinates`; ``obs["perturbation"]`` and ``obs["prior_only"]`` (True where
            a target was never perturbed in training).
        """
        if self.drift_kind == "neural":
            return predict_neural(
                self,
                perturbations,
                num_cells,
                key=_key(key),
                allow_prior_only=allow_prior_only,
                **simulation,
            )
        if simulation:
            raise TypeError(f"Simulation options {sorted(simulation)} need drift='neural'.")
        requests = [self._targets(label, allow_prior_only) for label in perturbations]
        rows, flags, names = (list(column) for column in zip(*requests, strict=True))
        draw_key, latent_key, size_key, count_key = jax.random.split(_key(key), 4)
        # Cell c of every perturbation uses posterior draw c: one Lyapunov solve per draw and
        # perturbation, all in one vectorised call.
        draws = self._draws(draw_key, num_cells)
        mean, _, factor = self._laws(draws, np.stack(rows))
        noise = jax.random.normal(latent_key, mean.shape)
        latent = mean + jnp.einsum("ckij,ckj->cki", factor, noise)
        log_rate = self.space.decode_draws(latent, mean, draws)  # every gene, AnnData order
        latent = jnp.swapaxes(latent, 0, 1).reshape(-1, latent.shape[-1])  # perturbation-major
        log_rate = jnp.swapaxes(log_rate, 0, 1).reshape(-1, len(self.genes))
        concentration = self.space.in_gene_order(draws["noise_concentration"])
        concentration = jnp.tile(concentration, (len(rows), 1))
        sizes = jax.random.choice(size_key, jnp.asarray(self._library_sizes), (latent.shape[0],))
        counts = NegativeBinomial().distribution(log_rate, sizes, concentration=concentration)
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


def _condition_rates(arrays) -> np.ndarray:
    """Mean of ``counts / size_factors`` over the cells of each condition ``[P, d]``."""
    return _condition_means(arrays.counts / arrays.size_factors[:, None], arrays)


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
