"""The :class:`LCD` wrapper: fit a screen, then predict, query, refine and ask counterfactuals.

What differs between drift families is in :mod:`._backends`; the maths in the modules named
by :mod:`causalcell.models.lcd`.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata
import jax.numpy as jnp
import numpy as np

from causalcell._core.keys import as_key
from causalcell.clipr import posterior_direct_effects
from causalcell.data import register, to_arrays
from causalcell.models.lcd._backends import BACKENDS, DriftBackend, backend_named
from causalcell.models.lcd._files import SavedLCD
from causalcell.models.lcd._fit import (
    check_condition_batch,
    fit_options,
    noise_model,
    prepare_screen,
)
from causalcell.models.lcd._gene_space import GeneSpace, choose_gene_space
from causalcell.models.lcd._pairs import kind_spec, screen_kinds
from causalcell.models.lcd._refine import refine_lcd
from causalcell.models.lcd._targets import effect_columns, perturbation_labels, perturbation_targets
from causalcell.models.lcd._world_queries import CellWorlds
from causalcell.models.lcd._worlds import counterfactual_result
from causalcell.queries import counterfactual as counterfactual_query

__all__ = ["LCD"]


class LCD(CellWorlds, SavedLCD):
    """A fitted latent causal diffusion: ``LCD.fit(adata, ...)``, then predict and query;
    the program, ``do`` requests and counterfactuals of cells
    (:class:`._world_queries.CellWorlds`); ``save(folder)`` and ``LCD.load(folder)``
    (:class:`._files.SavedLCD`).

    Attributes
    ----------
    posterior
        The :class:`causalcell.inference.Posterior` of the fit.
    registry
        The :class:`causalcell.data.Registry` of the training AnnData.
    intervention
        The screen's intervention kind (``"shift"``, ``"knockdown"``, ``"knockout"``), or its
        kinds joined by ``"|"`` when perturbations have their own (``"knockdown|knockout"``;
        the first is the default).
    space
        The :class:`._gene_space.GeneSpace`: modelled genes and number of programs.
    backend
        The :class:`._backends.DriftBackend` of the drift family that was fitted.
    library_sizes
        Size factors of the training cells (generated cells draw theirs from these).
    prior_mask
        The prior mask of the drift in latent coordinates (``None``: every edge allowed).
    settings
        ``LCD.fit``'s ``global_guide``, ``rank``, ``drift_options`` and ``noise`` (they rebuild
        its program and guide).
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
        settings: dict | None = None,
    ):
        self.posterior = posterior
        self.backend: DriftBackend = backend_named(drift)
        self.registry = registry
        self.intervention = intervention
        self.library_sizes = library_sizes
        # In latent coordinates (modelled genes, then programs); the gene mask in a full space.
        self.prior_mask = None if prior_mask is None else jnp.asarray(prior_mask, jnp.float32)
        genes = registry.genes
        self.space = space or GeneSpace(genes, np.arange(len(genes)), 0)
        self.settings = {
            "global_guide": "auto",
            "rank": None,
            "drift_options": None,
            "noise": "negative_binomial",
            **(settings or {}),
        }

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
        condition_batch: int | str | None = "auto",
        learning_rate: float = 0.01,
        key: int = 0,
        progress_bar: bool = True,
        global_guide: str = "auto",
        rank: int | None = None,
        modelled_genes: str | int | Sequence[str] | None = None,
        programs: int | None = None,
        drift: str = "linear",
        drift_options: dict | None = None,
        noise: str = "negative_binomial",
        perturbation_targets=None,
        perturbation_kinds=None,
        **fit_kwargs,
    ) -> LCD:
        """Register ``adata`` and fit LCD by minibatch SVI with the amortized guide.

        The encoder sees each cell's log1p-normalised counts and its condition (one-hot). The
        step size decays tenfold over the fit. ``global_guide`` picks the posterior family of
        the globals (drift, intervention and noise parameters): ``"full"`` (every correlation),
        ``"lowrank"`` (``rank``), ``"kronecker"`` (drift rows and
        columns correlated, :class:`causalcell.inference.AutoKroneckerNormal`), ``"normal"``
        (mean-field, narrower intervals) or ``"auto"``: ``"full"`` up to
        ``inference.FULL_RANK_LIMIT`` global dimensions (about 20 genes), else ``"normal"``.
        Other keywords go to :func:`causalcell.inference.fit` (``checkpoint``; or
        ``loss=LocalImportanceELBO(8)``, which unbiases the split of count variance).

        ``condition_batch`` conditions per minibatch (:func:`._fit.condition_strata`): each
        step draws ``batch_size`` cells from that many conditions and computes only their
        stationary laws; ``None`` draws cells uniformly (every condition's law every step);
        ``"auto"``: 16 on screens of more than 64 conditions, else ``None``.

        The gene space (:mod:`._gene_space`): ``modelled_genes`` are latent coordinates and
        ``programs`` latent programs follow them; every other gene is decoded linearly from
        that state. Perturbed genes are always modelled. ``modelled_genes=None`` models every
        gene of a screen of at most 64 genes (the full model) and only the perturbed genes of
        a larger one; ``"all"`` models every gene; a number ``n`` adds the ``n`` most
        variable other genes (variance of log1p-normalised expression); a list adds those
        genes. ``programs=None`` gives 0 when every gene is modelled, else 8. The cost of a
        step grows with the cube of ``m = modelled + programs`` and linearly in the genes.

        ``drift="neural"`` fits the neural-drift program (:func:`._neural_program.lcd_neural_model`,
        KDS factor, per-condition Gaussian latent base) on every gene (``modelled_genes``
        defaults to ``"all"``; a reduced space raises), with the amortized guide of
        :func:`._neural_fit.neural_problem`; ``drift_options`` are that program's keyword
        arguments (``hidden``, ``weight_scale``, ``kds_weight``, ``kds_statistic``). Its memory
        grows as ``d^2 hidden`` per cell of a batch, so keep ``d`` in the tens.

        ``noise`` (:data:`._fit.NOISE_MODELS`): counts through ``"negative_binomial"``,
        ``"zero_inflated_negative_binomial"`` or ``"poisson"``; continuous data already on a
        log (or arcsinh) scale through ``"gaussian"`` (cytometry, protein levels, log-normalised
        expression: not checked as counts; size factors are ones unless ``size_factor_key``
        names a column; every gene modelled). Neural drift observes counts by the negative
        binomial only.

        ``perturbation_targets`` names the target gene(s) of perturbations that are not genes
        themselves (guides, reagents, drugs; :func:`causalcell.data.register`). Each
        (perturbation, target) pair then gets its own intervention parameter around its
        target's, with a learned spread (:mod:`._pairs`): two reagents may act on one target in
        opposite directions, two guides to different depths, and an unseen perturbation of a
        trained target is predicted from that spread (flagged ``prior_only``). Linear drift.

        ``perturbation_kinds`` gives perturbations a kind other than ``intervention`` (which
        stays the default, of genes named directly and of ``do`` requests), e.g.
        ``{"sgGATA1": "knockout"}`` in a CRISPRi screen; each kind has its own per-target
        parameter, and :attr:`intervention` joins the screen's kinds (``"knockdown|knockout"``).
        """
        backend = backend_named(drift)
        screen_kinds(intervention)  # an unknown kind raises before any work
        named = perturbation_targets is not None or perturbation_kinds is not None
        if named and not backend.perturbation_pairs:
            raise ValueError(
                f"drift={drift!r} learns one parameter per target gene: perturbation_targets "
                "and perturbation_kinds need drift='linear'."
            )
        observation = noise_model(noise)
        if noise not in backend.noises:
            raise ValueError(f"drift={drift!r} takes noise in {backend.noises}, not {noise!r}.")
        check_condition_batch(condition_batch, batch_size)  # before registering the data
        if drift_options and not backend.takes_options:
            takers = " or ".join(repr(b.name) for b in BACKENDS.values() if b.takes_options)
            raise ValueError(f"drift_options are options of drift={takers} only.")
        if modelled_genes is None:
            modelled_genes = backend.default_modelled_genes
        registry = register(
            adata,
            perturbation_key=perturbation_key,
            control=control,
            layer=layer,
            size_factor_key=size_factor_key,
            count_data=observation.is_count_model,
            perturbation_targets=perturbation_targets,
            perturbation_kinds=perturbation_kinds,
        )
        kinds = registry.perturbation_kinds  # of the perturbations the cells carry
        intervention = kind_spec(intervention, [kinds.get(name) for name in registry.perturbations])
        arrays = to_arrays(adata, registry)
        space = choose_gene_space(arrays, registry.targets, modelled_genes, programs)
        if not (observation.is_count_model or space.is_full):
            raise ValueError(
                f"noise={noise!r} models every gene as a coordinate: pass modelled_genes='all' "
                "and programs=0 (decoded genes are counts' statistics)."
            )
        arrays = space.reorder(arrays)  # columns: modelled genes, then decoded genes
        options = fit_options(arrays, num_steps, learning_rate, batch_size, condition_batch)
        options.update(key=key, progress_bar=progress_bar, **fit_kwargs)
        settings = {"global_guide": global_guide, "rank": rank, "drift_options": drift_options}
        settings["noise"] = noise
        screen = prepare_screen(arrays, space, registry, intervention, prior_mask, observation)
        posterior = backend.problem(screen, settings).fit(**options)
        mask, sizes = screen.prior_mask, arrays.size_factors
        return cls(posterior, registry, intervention, sizes, mask, space, drift, settings)

    @property
    def noise(self):
        """The :class:`causalcell.noise.NoiseModel` the cells are observed through."""
        return noise_model(self.settings["noise"])

    @property
    def drift_kind(self) -> str:
        """``"linear"`` or ``"neural"``: the drift family that was fitted."""
        return self.backend.name

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

    def drift(self, key=0, num_samples: int = 200, *, programs: bool = False) -> np.ndarray:
        """Posterior draws of the drift matrix among modelled genes ``[num_samples, n, n]``
        (row = target; genes :attr:`modelled_genes`).

        With latent programs, this is the drift of the modelled genes with the programs as
        unmeasured mediators, the Schur complement ``A_MM - A_MP A_PP^{-1} A_PM``
        (:func:`._gene_space.reduce_programs`): it has the same stationary responses of
        modelled genes to their shifts as the whole system. ``programs=True`` returns the drift
        of the whole latent state ``[num_samples, m, m]`` instead (coordinates
        :attr:`coordinates`).

        Neural drift has no matrix: this returns its Jacobians at the control fixed point
        (``baseline``, where the noise-free control drift vanishes), the linear drift that
        governs small perturbations of the control state (and the one :meth:`effects` uses).
        """
        draws = self.posterior.sample(as_key(key), num_samples)
        return self.backend.drift(self, draws, programs)

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
        targets, columns = effect_columns(self, targets)
        draws = self.posterior.sample(as_key(key), num_samples)
        responses = self.backend.responses(self, draws, columns)
        return posterior_direct_effects(
            responses, genes=list(self.modelled_genes), targets=targets, probability=probability
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
        (:func:`._neural.stationary_neural`; ``simulation`` takes its ``chains`` per
        draw, default 100, ``dt`` and ``burn_in``); samples of the law itself are
        :meth:`predict`'s ``obsm["latent"]``.

        Returns
        -------
        mean, covariance
            ``[num_samples, m]`` and ``[num_samples, m, m]`` over :attr:`coordinates`: the
            modelled genes' log-expression, then the programs (every gene in a full space).
        """
        request = perturbation_targets(self, perturbation, allow_prior_only)
        return self.backend.stationary(
            self, request, key=as_key(key), num_samples=num_samples, **simulation
        )

    def predict(
        self,
        perturbations: str | Sequence[str],
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
        (:func:`._neural.predict_neural`; ``simulation`` may set ``dt`` and
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
        return self.backend.predict(
            self,
            perturbation_labels(perturbations),
            num_cells,
            key=as_key(key),
            allow_prior_only=allow_prior_only,
            **simulation,
        )

    def refine(self, **options) -> LCD:
        """A copy whose global posterior is drawn by NUTS with the latents integrated out
        through the guide's Gaussian count messages (linear drift, every gene modelled).

        Slower than the SVI fit it starts from, and better calibrated (interval coverage of
        CLIPR's direct effects: ``benchmarks/clipr_recovery.py --refine``). ``options`` go to
        :func:`causalcell.models.lcd._refine.refine_lcd`
        (``num_warmup``, ``num_samples``, ``key``, NUTS settings).
        """
        return refine_lcd(self, **options)


# queries.counterfactual is a generic function: a fitted LCD answers with its exact abduction.
counterfactual_query.register(LCD)(counterfactual_result)
