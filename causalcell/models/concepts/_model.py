"""``ConceptModel``: the causal concept model fitted to concept-labelled AnnData, and its
queries (embeddings, generation, per-cell counterfactuals, concept-to-concept effects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import optax
import pandas as pd

from causalcell._core.keys import as_key
from causalcell.data import MISSING_LEVEL, concept_arrays
from causalcell.graph import topological_order
from causalcell.inference import fit
from causalcell.models.concepts._cells import cells_anndata, worlds_anndata
from causalcell.models.concepts._files import read_folder, write_folder
from causalcell.models.concepts._fit import (
    check_sizes,
    concept_graph,
    guide_kwargs,
    missing_concepts,
    model_data,
    model_kwargs,
    query_data,
)
from causalcell.models.concepts._laplace import Readout, labelled_cells, readout_posterior
from causalcell.models.concepts._program import concept_model
from causalcell.models.concepts._queries import (
    counterfactual_draws,
    couple_counts,
    effect_table,
    generated_draws,
    label_log_density,
    label_shares,
    mean_embeddings,
    predictive_counts,
    swapped_noise,
)
from causalcell.models.concepts._scm import ConceptSpec
from causalcell.noise import noise_model

__all__ = ["ConceptModel"]

#: Cells per chunk of a counterfactual query (memory ``chunk x draws x genes`` floats).
CHUNK = 256


class ConceptModel:
    """A fitted causal concept model (:mod:`._program`): ``ConceptModel.fit(adata, concepts,
    graph)``, then :meth:`embed`, :meth:`generate`, :meth:`counterfactual` and :meth:`effects`.

    Attributes
    ----------
    posterior
        The :class:`causalcell.inference.Posterior` of the fit.
    spec
        The :class:`._scm.ConceptSpec`: concepts parents first, levels, parents.
    genes
        The modelled genes (highly variable ones by default), in ``adata.var`` order.
    settings
        ``fit``'s model settings (``dimension``, ``unexplained``, ``hidden``, ``noise``, ...).
    library_sizes
        Size factors of the training cells (generated cells draw theirs from these).
    seen
        The level combinations of the training cells, as a set of tuples of level names.
    """

    def __init__(
        self, posterior, spec: ConceptSpec, genes, settings, library_sizes, seen, readout=None
    ):
        self.posterior, self.spec, self.genes = posterior, spec, tuple(genes)
        self.settings, self.library_sizes, self.seen = dict(settings), library_sizes, set(seen)
        self.readout: Readout | None = readout

    @classmethod
    def fit(
        cls,
        adata,
        concepts: Sequence[str],
        graph: nx.DiGraph | None = None,
        *,
        layer: str | None = None,
        size_factor_key: str | None = None,
        genes: int | Sequence[str] | None = 2000,
        dimension: int = 8,
        unexplained: int = 8,
        hidden: int = 128,
        encoder_hidden: Sequence[int] = (128,),
        noise: str = "negative_binomial",
        decoder_posterior: str = "laplace",
        concept_noise: bool = True,
        num_steps: int = 3000,
        batch_size: int | None = 256,
        learning_rate: float = 3e-3,
        key: int = 0,
        progress_bar: bool = True,
        **fit_kwargs,
    ) -> ConceptModel:
        """Fit the concept model to the cells of ``adata`` by minibatch SVI.

        Parameters
        ----------
        adata
            Cells with one ``.obs`` column per concept (NaN where a cell lacks a label: its
            level is summed out, :func:`._program.concept_model`); not modified.
        concepts
            The concept columns.
        graph
            The concept DAG over the names in ``concepts`` (``age -> cell_type``: age causes
            cell type); ``None``: no edges (independent concepts).
        layer, size_factor_key
            Counts (``.X`` by default) and size factors (library sizes by default).
        genes
            A number: the most variable genes (:func:`causalcell.preprocessing.variable_genes`),
            never the first columns; a list of names; ``None``: every gene.
        dimension, unexplained, hidden
            Embedding size per concept, size of the unexplained part, width of the decoder's
            hidden layer (0: a linear decoder).
        encoder_hidden
            Widths of the encoder (counts and one-hot labels to each cell's noise).
        decoder_posterior
            ``"laplace"`` (default): mean-field Gaussian posteriors of the globals, then each
            gene's output weights and baseline replaced by their Laplace approximation, a
            full-covariance Gaussian per gene (:mod:`._laplace`; the widest honest per-cell
            intervals measured, design section 4.8); ``"normal"``: mean-field Gaussians only;
            ``"lowrank"``: every global in one low-rank multivariate normal; ``"point"``: the
            decoder's weights and baseline as point (MAP) estimates, as a VAE's.
        concept_noise
            ``False``: no variation of a concept's embedding within a level (each concept enters
            the decoder as its level, as the covariates of a conditional VAE; an ablation).
        noise
            ``"negative_binomial"``, ``"zero_inflated_negative_binomial"``, ``"poisson"`` or
            ``"gaussian"`` (values already on a log scale).
        num_steps, batch_size, learning_rate, key, progress_bar
            SVI settings (Adam, step size decaying tenfold over the fit); the same key gives
            the same fit. Other keywords go to :func:`causalcell.inference.fit`
            (``checkpoint``, ``early_stopping``).

        Raises
        ------
        ValueError
            Before any work, for a graph over other names than ``concepts``, a cyclic graph,
            bad sizes or an unknown noise; then for invalid counts, or missing labels of
            concepts whose joint levels are more than ``MAX_COMBINATIONS`` (64).
        """
        observation = noise_model(noise)
        check_sizes(dimension, num_steps, unexplained, hidden, decoder_posterior)
        graph = concept_graph(concepts, graph)
        order = topological_order(graph)
        arrays = concept_arrays(
            adata,
            order,
            layer=layer,
            size_factor_key=size_factor_key,
            genes=genes,
            count_data=observation.is_count_model,
        )
        sizes = [len(arrays.levels[name]) for name in order]
        missing = missing_concepts(arrays.labels, order, sizes)
        if decoder_posterior == "laplace":
            labelled_cells(arrays.labels)  # raises before the fit when there is none
        spec = ConceptSpec.from_graph(graph, arrays.levels)
        counts = arrays.counts
        settings = {
            "dimension": int(dimension),
            "unexplained": int(unexplained),
            "hidden": int(hidden),
            "noise": noise,
            "encoder_hidden": tuple(encoder_hidden),
            "decoder_posterior": decoder_posterior,
            "concept_noise": bool(concept_noise),
            "layer": layer,
            "size_factor_key": size_factor_key,
            "missing": missing,
            "key": key,
        }
        data = model_data(arrays.labels, counts, arrays.size_factors, observation)
        posterior = fit(
            concept_model,
            data,
            guide="amortized",
            model_kwargs=model_kwargs(spec, counts.shape[1], settings),
            guide_kwargs=guide_kwargs(spec, settings, data["log_mean"], arrays.labels),
            optimizer=optax.adam(optax.exponential_decay(learning_rate, num_steps, 0.1)),
            num_steps=num_steps,
            batch_size=batch_size,
            key=key,
            progress_bar=progress_bar,
            **fit_kwargs,
        )
        labelled = arrays.labels[~(arrays.labels == MISSING_LEVEL).any(axis=1)]
        seen = {tuple(row) for row in np.unique(labelled, axis=0).tolist()}
        readout = None
        if decoder_posterior == "laplace":
            encoded = posterior.encode()
            readout = readout_posterior(posterior.median(), spec, observation, data, encoded)
        return cls(posterior, spec, arrays.genes, settings, arrays.size_factors, seen, readout)

    def save(self, folder) -> None:
        """Write the fitted model to ``folder`` (:mod:`._files`); :meth:`load` reads it back
        and answers every query as this one does, bit for bit."""
        write_folder(self, folder)

    @classmethod
    def load(cls, folder) -> ConceptModel:
        """A model written by :meth:`save`."""
        return cls(**read_folder(folder))

    # -- cells ----------------------------------------------------------------------------
    def _data(self, adata, allow_missing: bool = False) -> tuple[dict, np.ndarray]:
        """The model's data of the cells of ``adata`` (the fitted genes and levels)."""
        log_mean = self.posterior.data["log_mean"]
        return query_data(adata, self.spec, self.genes, self.settings, log_mean, allow_missing)

    @property
    def noise(self):
        return noise_model(self.settings["noise"])

    def _draws(self, key, num_samples: int) -> dict:
        """Posterior draws of the globals; under ``decoder_posterior="laplace"`` the readout
        (output weights, baseline) from its Laplace approximation (:mod:`._laplace`)."""
        draws = self.posterior.sample(key, num_samples)
        if self.readout is None:
            return draws
        return self.readout.draws(jax.random.fold_in(as_key(key), 1), draws)

    def embed(self, adata, *, store: bool = False) -> dict[str, np.ndarray]:
        """Posterior-mean embedding of each concept ``{concept: [n, D]}`` and of the unexplained
        part (``"unexplained"``: ``[n, U]``) of the cells of ``adata``; ``store=True`` also
        writes them to ``adata.obsm["concept_<name>"]`` and ``adata.obsm["concept_unexplained"]``
        (the names keep clear of other keys, e.g. the simulator's true ``"unexplained"``)."""
        data, labels = self._data(adata)
        local = self.posterior.encode(data=data)
        result = mean_embeddings(self.posterior.sample(0, 100), self.spec, labels, local)
        if store:
            for name, value in result.items():
                adata.obsm[f"concept_{name}"] = value
        return result

    def reconstruct(self, cells, *, key=0) -> anndata.AnnData:
        """One posterior predictive draw of the counts of each cell of ``cells`` (its noise from
        the encoder, the globals from one posterior draw): a single sample, not an average."""
        data, labels = self._data(cells)
        draw_key, local_key, count_key = jax.random.split(as_key(key), 3)
        values = {name: value[0] for name, value in self._draws(draw_key, 1).items()}
        local = self.posterior.encode(data=data, num_samples=1, key=local_key)
        own, rest = local["concept_noise"]["draws"][0], local["unexplained"]["draws"][0]
        arguments = (self.spec, self.noise, labels, own, rest, data["size_factors"])
        counts = np.asarray(predictive_counts(count_key, values, *arguments), np.float32)
        index = list(map(str, cells.obs_names))
        return cells_anndata(self.spec, self.seen, self.genes, counts, labels, index)

    def generate(self, levels: Mapping, num_cells: int = 500, *, key=0, num_samples: int = 100):
        """New cells under ``do(levels)`` (e.g. ``{"cell_type": "T", "age": "90w"}``), the other
        concepts drawn from the fitted SCM, each cell from one of ``num_samples`` posterior
        draws; ``obs["unseen"]`` flags level combinations no training cell had.

        Returns an AnnData: ``X`` counts, ``obs`` the concepts, ``layers["log_rate"]``."""
        fixed = self.spec.assignment(levels)
        draw_key, cell_key, size_key, count_key = jax.random.split(as_key(key), 4)
        draws = self._draws(draw_key, num_samples)
        levels_drawn, log_rate = generated_draws(cell_key, draws, self.spec, fixed, num_cells)
        sizes = jax.random.choice(size_key, jnp.asarray(self.library_sizes), (num_cells,))
        parameters = {
            name: draws[self.noise.site_name(name)][jnp.arange(num_cells) % num_samples]
            for name in self.noise.parameters_of(draws)
        }
        likelihood = self.noise.distribution(log_rate, sizes, **parameters)
        counts = np.asarray(likelihood.sample(count_key), np.float32)
        result = cells_anndata(self.spec, self.seen, self.genes, counts, np.asarray(levels_drawn))
        result.obs["size_factor"] = np.asarray(sizes, np.float32)
        result.layers["log_rate"] = np.asarray(log_rate, np.float32)
        return result

    def counterfactual(
        self,
        cells,
        levels: Mapping,
        *,
        num_samples: int = 100,
        key=0,
        probability: float = 0.9,
        abduction: str = "cell",
    ) -> anndata.AnnData:
        """These observed cells, had their concepts been ``levels`` (e.g. ``{"age": "90w"}``).

        Per posterior draw of the globals: abduction of each cell's own noise (its embedding
        noise and unexplained part from the encoder's posterior, its Gumbel noise from its
        observed labels under that draw's mechanisms), action (the intervened concepts set,
        their descendants recomputed, every other concept kept) and prediction (decoded
        log-rates; counts of draw 0 by quantile coupling with the observed counts).

        ``abduction="swap"`` gives CausCell's population-level answer instead (a comparison,
        not a counterfactual of the cell): the intervened concepts' own noise is that of a
        random training cell with the new level, the unexplained part is drawn afresh and the
        descendants are recomputed from fresh noise.

        Cells may lack labels (NaN): per draw their levels are drawn from their posterior given
        the counts (:func:`._queries.counterfactual_draws`), so the answer averages over what
        the cell may be; factual rows keep NaN, and ``obsm["level_probability_<concept>"]`` of
        factual rows gives the share of draws at each level.

        Returns
        -------
        anndata.AnnData
            Factual then counterfactual rows: ``obs["world"]``, ``obs["cell"]``, the concepts
            (the counterfactual's of draw 0), ``obs["unseen"]``; ``X`` counts;
            ``layers["shift_mean"|"shift_lower"|"shift_upper"]``: posterior mean and
            equal-tailed interval of each gene's counterfactual minus factual log-rate (zero in
            factual rows); ``obsm["level_probability_<concept>"]`` of counterfactual rows: the
            share of draws giving each level.
        """
        fixed = self.spec.assignment(levels)
        if not 0 < probability < 1:
            raise ValueError(f"probability must be in (0, 1), got {probability}.")
        if abduction not in ("cell", "swap"):
            raise ValueError(f"abduction must be 'cell' or 'swap', got {abduction!r}.")
        data, labels = self._data(cells, allow_missing=True)
        missing = missing_concepts(labels, self.spec.names, self.spec.sizes)
        sizes = data["size_factors"]  # the counts weigh the completions of missing labels only
        observed = (self.noise.observation(data["counts"], sizes), sizes) if missing else None
        draw_key, local_key, world_key, count_key = jax.random.split(as_key(key), 4)
        draws = self._draws(draw_key, num_samples)
        local = self.posterior.encode(data=data, num_samples=num_samples, key=local_key)
        own, rest = local["concept_noise"]["draws"], local["unexplained"]["draws"]
        after = None
        if abduction == "swap":
            trained = self.posterior.encode()["concept_noise"]["mean"]
            donors = (trained, np.asarray(self.posterior.data["labels"]))
            after = swapped_noise(jax.random.fold_in(local_key, 1), donors, own, rest.shape, fixed)
        tails = ((1 - probability) / 2, (1 + probability) / 2)
        parameters = {
            name: draws[self.noise.site_name(name)][0] for name in self.noise.parameters_of(draws)
        }
        parts = {name: [] for name in ("mean", "lower", "upper", "counts", "share")}
        parts["factual_share"] = []
        for start in range(0, labels.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            worlds = counterfactual_draws(
                jax.random.fold_in(world_key, start),
                draws,
                self.spec,
                jnp.asarray(labels[rows]),
                own[:, rows],
                rest[:, rows],
                fixed,
                abduction == "cell",
                None if after is None else (after[0][:, rows], after[1][:, rows]),
                missing,
                None if observed is None else (observed[0][rows], observed[1][rows]),
                self.noise,
            )
            shift = np.asarray(worlds["counterfactual"] - worlds["factual"])
            parts["mean"].append(shift.mean(axis=0))
            low, high = np.quantile(shift, tails, axis=0)
            parts["lower"].append(low)
            parts["upper"].append(high)
            parts["share"].append(np.asarray(worlds["levels"]))
            parts["factual_share"].append(np.asarray(worlds["factual_levels"]))
            parts["counts"].append(
                np.asarray(
                    couple_counts(
                        jax.random.fold_in(count_key, start),
                        self.noise,
                        parameters,
                        data["counts"][rows],
                        data["size_factors"][rows],
                        worlds["factual"][0],
                        worlds["counterfactual"][0],
                    )
                )
            )
        result = worlds_anndata(self.spec, self.seen, self.genes, cells, data, labels, parts)
        result.uns["counterfactual"] = {"levels": dict(levels), "probability": probability}
        result.uns["counterfactual"]["abduction"] = abduction
        return result

    def predict_labels(self, cells, *, num_samples: int = 100, key=0) -> dict[str, pd.DataFrame]:
        """Posterior probability of each level of the concepts some of ``cells`` lack (NaN)
        ``{concept: DataFrame [cells, levels]}``: the model's levels summed out as in the fit,
        weighted by the counts' likelihood (importance sampling over the encoder's draws and
        the posterior draws of the globals). Observed labels come back with probability 1."""
        data, labels = self._data(cells, allow_missing=True)
        missing = missing_concepts(labels, self.spec.names, self.spec.sizes)
        if not missing:
            return {}
        encoded = self.posterior.encode(data=data)
        draws = self._draws(key, num_samples)
        shares = label_shares(as_key(key), draws, self.spec, missing, data, encoded, self.noise)
        names, levels = self.spec.names, self.spec.levels
        return {
            names[k]: pd.DataFrame(share, cells.obs_names, list(levels[k]))
            for k, share in zip(missing, shares, strict=True)
        }

    def label_log_likelihood(self, cells, *, num_samples: int = 200, key=0) -> np.ndarray:
        """Each cell's log posterior predictive density of its concept labels ``[n]``.

        The concept graph enters the model only through the label mechanisms, so summing this
        over held-out cells compares graphs fitted to the same training cells (higher: the
        data support that graph better). Graphs of one Markov equivalence class (``a -> b``
        and ``b -> a``) fit categorical labels equally well and cannot be told apart this way.
        """
        _, labels = self._data(cells)
        draws = self.posterior.sample(key, num_samples)
        return np.asarray(label_log_density(draws, self.spec, jnp.asarray(labels)))

    def effects(self, *, num_samples: int = 200, key=0, probability: float = 0.9) -> pd.DataFrame:
        """Concept-to-concept effects: for every edge ``parent -> child`` of the graph and
        every level pair, ``P(child = l | do(parent = a))`` with its posterior mean and
        equal-tailed interval (the mechanisms' logits are identified only up to constants; these
        probabilities are identified). Columns ``parent``, ``child``, ``parent_level``,
        ``child_level``, ``probability``, ``lower``, ``upper``."""
        draws = self.posterior.sample(key, num_samples)
        return effect_table(as_key(key), draws, self.spec, probability)
