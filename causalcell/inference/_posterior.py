"""The result of a fit: posterior draws of global sites, per-cell encodings, predictions, files.

A :class:`Posterior` wraps either a fitted guide and its parameters (``method="svi"``) or stored
NUTS draws (``method="nuts"``) together with the model and the data it was fitted to. Global
sites are the latent sample sites outside the per-cell plate (per-gene sites in a "genes" plate
included); local sites are the latent sample sites inside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from causalcell._core import arviz_adapter as _arviz
from causalcell._core.keys import as_key
from causalcell.inference._guides import AmortizedGuide, draw_sites, encode_batch
from causalcell.inference._posterior_files import (
    describe_model,
    load_posterior_arguments,
    ready_guide,
    save_posterior,
)
from causalcell.inference._summary import summary
from causalcell.inference._trace import is_hashable, split_data

__all__ = ["Posterior"]


class Posterior:
    """A fitted posterior: SVI guide parameters or NUTS draws, with the model and its data.

    Built by :func:`causalcell.inference.fit` and :func:`causalcell.inference.fit_nuts`; all
    arguments are keyword-only after ``model``.

    Parameters
    ----------
    model
        The NumPyro model, called as ``model(**data, **model_kwargs)``.
    method
        ``"svi"`` (needs ``guide`` and ``params``) or ``"nuts"`` (needs ``samples``).
    data
        The arrays the model was fitted to.
    model_kwargs
        Non-array keyword arguments of the model.
    guide, params
        The fitted guide and the (constrained) parameters of guide and model (SVI).
    samples
        ``{site: [draws, ...]}`` of every latent site (NUTS), chains one after the other.
    losses
        The loss history (SVI); kept in :attr:`losses`, not in :meth:`to_arviz`.
    config
        JSON-serialisable settings of the fit, saved with the posterior.
    plate
        Name of the per-cell plate.
    num_chains
        Number of chains stacked in ``samples``.
    sample_stats
        ``{statistic: [chain, draw]}`` per-draw diagnostics of NUTS (``diverging``, ...).

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model(values=None, *, noise):
    ...     mean = numpyro.sample("mean", dist.Normal(0.0, 10.0))
    ...     with numpyro.plate("cells", noise.shape[0]) as index:
    ...         numpyro.sample("values", dist.Normal(mean, noise[index]), obs=values[index])
    >>> data = {"values": jnp.array([0.5, 1.5]), "noise": jnp.ones(2)}
    >>> posterior = Posterior(model, method="nuts", data=data, samples={"mean": jnp.ones(4)})
    >>> posterior
    Posterior(method='nuts', model=...model, guide=None, cells=2)
      global sites: mean ()
      local sites: none
      draws: 4 in 1 chain(s)
    >>> posterior.sample(0, num_samples=2)["mean"].shape
    (2,)
    """

    def __init__(
        self,
        model,
        *,
        method: str,
        data: Mapping,
        model_kwargs: Mapping | None = None,
        guide=None,
        params: Mapping | None = None,
        samples: Mapping | None = None,
        losses=None,
        config: Mapping | None = None,
        plate: str = "cells",
        num_chains: int = 1,
        sample_stats: Mapping | None = None,
    ):
        if method == "svi" and (guide is None or params is None):
            raise ValueError("A method='svi' posterior needs the fitted guide and its params.")
        if method == "nuts" and samples is None:
            raise ValueError("A method='nuts' posterior needs the MCMC samples.")
        if method not in ("svi", "nuts"):
            raise ValueError(f"method must be 'svi' or 'nuts', got {method!r}.")
        self.model, self.method, self.plate = model, method, plate
        self.data = dict(data)
        self.model_kwargs = dict(model_kwargs or {})
        self.guide, self.params = guide, params
        self.samples = None if samples is None else {k: jnp.asarray(v) for k, v in samples.items()}
        self.num_chains = num_chains
        self.sample_stats = {k: jnp.asarray(v) for k, v in (sample_stats or {}).items()}
        self.losses = None if losses is None else jnp.asarray(losses)
        self.config = dict(config or {})
        self._description = None
        # Jitted per posterior, so that no global cache keeps the guide.
        self._encode_batch = self._draw_sites = None
        if self.samples and self.num_draws % num_chains:
            raise ValueError(f"{self.num_draws} draws do not split into {num_chains} chains.")

    # -- what the model holds -----------------------------------------------------------------
    def describe(self) -> tuple[dict, int | None]:
        """The model's sample sites (shape, plates, observed) and the size of its cell plate,
        traced once abstractly and kept."""
        if self._description is None:
            self._description = describe_model(self.model, self.data, self.model_kwargs, self.plate)
        return self._description

    def _latent(self, local: bool) -> tuple[str, ...]:
        sites = self.describe()[0]
        return tuple(
            name
            for name, site in sites.items()
            if not site["observed"] and (self.plate in site["plates"]) == local
        )

    @property
    def global_sites(self) -> tuple[str, ...]:
        """Latent sample sites outside the per-cell plate (per-gene sites included)."""
        return self._latent(local=False)

    @property
    def local_sites(self) -> tuple[str, ...]:
        """Latent sample sites inside the per-cell plate."""
        return self._latent(local=True)

    @property
    def num_cells(self) -> int | None:
        """Size of the per-cell plate for :attr:`data` (``None`` if the model has no such plate)."""
        return self.describe()[1]

    @property
    def num_draws(self) -> int:
        """Number of stored NUTS draws, all chains together (0 for SVI)."""
        return 0 if not self.samples else next(iter(self.samples.values())).shape[0]

    def __repr__(self) -> str:
        return summary(self)

    # -- draws ----------------------------------------------------------------------------------
    def _select_draws(self, key, num_samples: int | None, names) -> dict:
        """``num_samples`` stored NUTS draws, picked at random without replacement (all if None)."""
        if num_samples is None or num_samples == self.num_draws:
            return {name: self.samples[name] for name in names}
        if num_samples > self.num_draws:
            raise ValueError(
                f"Only {self.num_draws} NUTS draws are stored; ask for at most that many "
                "(num_samples=None gives all) or run fit_nuts with more num_samples."
            )
        chosen = jax.random.choice(as_key(key), self.num_draws, (num_samples,), replace=False)
        return {name: self.samples[name][chosen] for name in names}

    def model_arguments(self, data: Mapping | None = None) -> dict:
        """Keyword arguments of one call of :attr:`model` and :attr:`guide`: the data (this
        posterior's, or ``data``) and the model's keyword arguments."""
        return {**(self.data if data is None else data), **self.model_kwargs}

    def ready_guide(self, data: Mapping | None = None) -> None:
        """Let the guide set itself up (prototype trace, encoder) on one cell of the data (this
        posterior's, or ``data``), so that its parameters can be read or its heads run outside
        a fit; as the fit's did (``config["compiled_setup"]``, see
        :func:`._posterior_files.ready_guide`)."""
        traced = self.config.get("compiled_setup", False)
        ready_guide(self.guide, self.model_arguments(data), self.plate, traced)

    def sample(self, key, num_samples: int | None = 1000) -> dict[str, jax.Array]:
        """Draws of the global sites.

        An :class:`AmortizedGuide` draws from its global part only (its encoder does not run),
        another guide runs whole, through :class:`numpyro.infer.Predictive` compiled once per
        posterior; NUTS picks stored draws at random without replacement.

        Parameters
        ----------
        key
            Seed or PRNG key.
        num_samples
            Number of draws; for NUTS, ``None`` gives every stored draw in order.

        Returns
        -------
        dict
            ``{site: [num_samples, ...]}`` for every site of :attr:`global_sites`.
        """
        names = self.global_sites
        if self.method == "nuts":
            return self._select_draws(key, num_samples, names)
        if num_samples is None:
            raise ValueError("An SVI posterior draws num_samples afresh: pass a number.")
        if not names:
            return {}
        guide = self._global_guide()
        arrays, keywords = split_data(self.model_arguments())
        others = tuple(sorted(keywords.items()))
        if not is_hashable(others):  # e.g. a dict argument: compiled per call
            return draw_sites(guide, names, num_samples, others, self.params, arrays, as_key(key))
        if self._draw_sites is None:  # compiled once per posterior and shape of the request
            self._draw_sites = jax.jit(partial(draw_sites, guide), static_argnums=(0, 1, 2))
        return self._draw_sites(names, num_samples, others, self.params, arrays, as_key(key))

    def median(self) -> dict[str, jax.Array]:
        """Central values of the global sites ``{site: value}``: the guide's medians (its
        locations, mapped to each site's support) for SVI, the draws' medians for NUTS."""
        names = self.global_sites
        if self.method == "nuts":
            return {name: jnp.median(self.samples[name], axis=0) for name in names}
        medians = self._global_guide().median(self.params)
        return {name: medians[name] for name in names}

    def _global_guide(self):
        """The (set up) guide of the global sites: an amortized guide's global part."""
        self.ready_guide()
        return self.guide.global_guide if isinstance(self.guide, AmortizedGuide) else self.guide

    def encode(
        self, batch_size: int = 1024, num_samples: int = 0, key=None, data: Mapping | None = None
    ) -> dict[str, dict[str, jax.Array]]:
        """Per-cell posterior of the local sites, for every cell.

        With an :class:`AmortizedGuide`, one jitted function of fixed batch shape encodes
        ``batch_size`` cells at a time (the last batch padded); with NUTS, the mean and
        standard deviation (``ddof=1``) of the stored draws summarise each cell.

        Parameters
        ----------
        batch_size
            Cells per jitted call (amortized guide).
        num_samples
            Draws per cell to return as well (0: none); needs ``key``.
        key
            Seed or PRNG key of the draws.
        data
            New cells to encode (amortized guide only); :attr:`data` by default.

        Returns
        -------
        dict
            ``{site: {"mean": [cells, ...], "scale": [cells, ...]}}``, with ``"draws"``
            ``[num_samples, cells, ...]`` when ``num_samples > 0``.

        Raises
        ------
        NotImplementedError
            For SVI with a guide other than :class:`AmortizedGuide` (use :meth:`predictive`).
        """
        if num_samples and key is None:
            raise ValueError("encode(num_samples > 0) draws at random: pass a key.")
        if self.method == "nuts":
            if data is not None:
                raise ValueError("NUTS draws belong to the fitted cells; encode takes no data.")
            names = self.local_sites
            draws = self._select_draws(key, num_samples, names) if num_samples else {}
            result = {}
            for name in names:
                values = self.samples[name]
                result[name] = {"mean": values.mean(0), "scale": values.std(0, ddof=1)}
                if num_samples:
                    result[name]["draws"] = draws[name]
            return result
        if not isinstance(self.guide, AmortizedGuide):
            raise NotImplementedError(
                f"encode needs an AmortizedGuide (an encoder of cells); this posterior's guide "
                f"is {type(self.guide).__name__}. Draw per-cell sites with "
                f"predictive(key, return_sites={list(self.local_sites)}) instead."
            )
        data = self.data if data is None else dict(data)
        self.ready_guide(data)
        num_cells = (
            self.num_cells
            if data is self.data
            else describe_model(self.model, data, self.model_kwargs, self.plate)[1]
        )
        if num_cells is None:
            raise ValueError(f"The model has no plate {self.plate!r} of cells to encode.")
        arrays, others = split_data(data)
        arrays = {name: jnp.asarray(value) for name, value in arrays.items()}
        if self._encode_batch is None:
            self._encode_batch = jax.jit(
                partial(encode_batch, self.guide), static_argnums=(0, 1, 2, 3)
            )
        static = (tuple(sorted(others.items())), num_samples, num_cells, min(batch_size, num_cells))
        key = as_key(0 if key is None else key)
        batches = [
            self._encode_batch(*static, self.params, arrays, start, jax.random.fold_in(key, start))
            for start in range(0, num_cells, static[-1])
        ]
        result = jax.tree.map(lambda *parts: jnp.concatenate(parts)[:num_cells], *batches)
        for fields in result.values():
            if "draws" in fields:
                fields["draws"] = jnp.moveaxis(fields["draws"], 0, 1)
        return result

    def predictive(
        self,
        key,
        num_samples: int = 100,
        data: Mapping | None = None,
        return_sites=None,
        **data_overrides,
    ) -> dict[str, jax.Array]:
        """Posterior predictive draws, through :class:`numpyro.infer.Predictive`.

        Latent sites are drawn from the guide run on ``data`` (SVI) or picked from the NUTS
        draws; the model then runs on ``data`` updated by ``data_overrides``, so ``counts=None``
        simulates counts while an amortized guide still encodes the observed ones.

        Parameters
        ----------
        key
            Seed or PRNG key.
        num_samples
            Number of draws (at most the number stored, for NUTS).
        data
            Data for guide and model; :attr:`data` by default.
        return_sites
            Sites to return; by default the model's observed and deterministic sites.
        **data_overrides
            Entries replacing those of ``data`` (or of ``model_kwargs``) for the model only.

        Returns
        -------
        dict
            ``{site: [num_samples, ...]}``.
        """
        guide_key, model_key = jax.random.split(as_key(key))
        data = self.data if data is None else dict(data)
        latent = [*self.global_sites, *self.local_sites]
        if self.method == "nuts":
            samples = self._select_draws(guide_key, num_samples, latent)
        else:
            self.ready_guide(data)
            guide = Predictive(
                self.guide, params=self.params, num_samples=num_samples, return_sites=latent
            )
            samples = guide(guide_key, **self.model_arguments(data))
        predictive = Predictive(
            self.model, posterior_samples=samples, params=self.params, return_sites=return_sites
        )
        return predictive(model_key, **{**self.model_arguments(data), **data_overrides})

    def to_arviz(self, num_samples: int = 500, key=None):
        """The global sites as an ArviZ posterior (``InferenceData`` on 0.x, ``DataTree`` on 1.x).

        SVI gives one chain of ``num_samples`` draws from :meth:`sample`; NUTS gives every
        stored draw with its chains (``num_samples`` and ``key`` unused) and a
        ``sample_stats`` group. Per-cell sites are left out (see :meth:`encode`), and so is the
        SVI loss history, whose length is not the number of draws (read :attr:`losses`).

        Parameters
        ----------
        num_samples
            Draws for an SVI posterior.
        key
            Seed or PRNG key of those draws (0 by default).
        """
        groups = {}
        if self.method == "nuts":
            chains = self.num_chains
            groups["posterior"] = {
                name: np.asarray(values).reshape(chains, -1, *values.shape[1:])
                for name, values in self.samples.items()
                if name in self.global_sites
            }
            if self.sample_stats:
                groups["sample_stats"] = {k: np.asarray(v) for k, v in self.sample_stats.items()}
        else:
            draws = self.sample(0 if key is None else key, num_samples)
            groups["posterior"] = {name: np.asarray(value)[None] for name, value in draws.items()}
        return _arviz.from_groups(groups)

    # -- files ----------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the posterior to one file (see :meth:`load`); the data are not saved.

        The file (an ``.npz`` archive, written atomically) holds the parameters (SVI) or draws
        (NUTS), the loss history, ``config``, and to recognise the model on loading: its
        qualified name and a fingerprint of its sample sites (names, shapes, plates).
        """
        save_posterior(self, path)

    @classmethod
    def load(
        cls, path, model, *, data: Mapping, guide=None, model_kwargs: Mapping | None = None
    ) -> Posterior:
        """Read a posterior written by :meth:`save`, for ``model`` run on ``data``.

        The parameter tree is rebuilt by tracing the guide (``guide``, or for an
        :class:`AmortizedGuide` with default encoder inputs and for ``AutoNormal``, one rebuilt
        from the file) on ``data``, then filled with the stored leaves, bit for bit.

        Raises
        ------
        ValueError
            If the file was saved from another model (a different qualified name or different
            sample sites: the message names both and the differing sites), with another guide,
            by a newer causalcell (``format_version``), or is not a saved posterior.
        """
        return cls(**load_posterior_arguments(path, model, data, guide, model_kwargs))
