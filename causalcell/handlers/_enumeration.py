"""Enumeration of discrete unknowns in abduction: hidden states have no noise that NUTS can
sample, so their posterior is computed exactly by summing over their configurations.

Units of one plate are independent given everything else, so where every discrete unknown is
one entry per unit of the same plate, each unit's configurations are enumerated on their own
(``C`` configurations of one unit, whatever the number of units); otherwise the joint
configurations of every entry are (at most :data:`MAX_CONFIGURATIONS`).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.util import log_density

__all__ = ["MAX_CONFIGURATIONS", "Enumeration"]

#: Most joint configurations of discrete unknowns that abduction enumerates.
MAX_CONFIGURATIONS = 2**16


class Enumeration:
    """The configurations of the discrete unknowns ``sites`` (trace entries of the abduction
    model) and the log densities of the abduction model at each of them.

    ``given`` are values of the other unknowns (parameters, continuous noise) at which the
    structure is checked (one plate or joint).
    """

    def __init__(self, abduction, sites, given, model_args, model_kwargs):
        self.abduction, self.sites = abduction, sites
        self.model_args, self.model_kwargs = model_args, model_kwargs
        supports = {
            name: jnp.ravel(site["fn"].enumerate_support(expand=False))
            for name, site in sites.items()
        }
        self.plate = self._unit_plate(given)
        if self.plate is None:
            sizes = {name: int(np.prod(jnp.shape(site["value"]))) for name, site in sites.items()}
        else:
            sizes = dict.fromkeys(sites, 1)  # one entry per unit, enumerated unit by unit
        count = int(np.prod([len(supports[name]) ** size for name, size in sizes.items()]))
        if count > MAX_CONFIGURATIONS:
            raise ValueError(
                f"Abduction would enumerate {count:,} joint configurations of the discrete "
                f"unknowns {sorted(sites)} (at most {MAX_CONFIGURATIONS:,}): ask about fewer "
                "units at once, or observe more of their sites."
            )
        axes = [range(len(supports[name])) for name, size in sizes.items() for _ in range(size)]
        grid = np.array(list(itertools.product(*axes))).reshape(count, -1)
        self.configurations, offset = {}, 0  # each [C, *entries]
        for name, size in sizes.items():
            entries = () if self.plate is not None else jnp.shape(sites[name]["value"])
            index = grid[:, offset : offset + size].reshape(count, *entries)
            self.configurations[name] = supports[name][index]
            offset += size

    def logits(self, values):
        """Log joint density at every configuration ``[C, units]`` (``units = 1`` when
        enumerated jointly), the other unknowns at ``values``."""
        return jax.vmap(lambda configuration: self._log_joint(values, configuration))(
            self.configurations
        )

    def marginal(self, values):
        """Log density of ``values`` and the evidence with the discrete unknowns summed out."""
        logits = self.logits(values)
        if self.plate is None:
            return jax.scipy.special.logsumexp(logits[:, 0])
        first = jax.tree_util.tree_map(lambda value: value[0], self.configurations)
        everything = log_density(
            self.abduction, self.model_args, self.model_kwargs, {**values, **self._spread(first)}
        )[0]
        # The terms outside the plate do not depend on the configuration.
        return everything - jnp.sum(logits[0]) + jnp.sum(jax.scipy.special.logsumexp(logits, 0))

    def sample(self, key, draws, num_samples):
        """``num_samples`` configurations per draw of the other unknowns (``draws`` with a
        leading axis, or ``{}``), noise-major: ``{site: [num_samples * S, ...]}``."""
        logits = jax.vmap(self.logits)(draws) if draws else self.logits({})[None]  # [S, C, u]
        logits = jnp.moveaxis(logits, 1, -1)  # [S, units, C]
        chosen = jax.random.categorical(key, logits, shape=(num_samples, *logits.shape[:-1]))
        chosen = chosen.reshape(-1, chosen.shape[-1])  # [N S, units]
        if self.plate is None:
            return {name: value[chosen[:, 0]] for name, value in self.configurations.items()}
        return {name: value[chosen] for name, value in self.configurations.items()}

    def _spread(self, configuration):
        """One unit's configuration given to every unit (shapes of the sites)."""
        return {
            name: jnp.broadcast_to(value, jnp.shape(self.sites[name]["value"]))
            for name, value in configuration.items()
        }

    def _log_joint(self, values, configuration):  # [units] (one plate) or [1] (joint)
        if self.plate is None:
            merged = {**values, **configuration}
            return log_density(self.abduction, self.model_args, self.model_kwargs, merged)[0][None]
        sites = self._plate_sites({**values, **self._spread(configuration)}, self.plate)
        return sum(site["fn"].log_prob(site["value"]) for site in sites)

    def _unit_plate(self, given):
        """The plate over which the discrete unknowns factorise unit by unit: its name when
        every one of them is a single entry per unit of that one plate and every site of the
        plate has a log density of one value per unit; else None."""
        frames = {tuple(f.name for f in site["cond_indep_stack"]) for site in self.sites.values()}
        shapes = {tuple(jnp.shape(site["value"])) for site in self.sites.values()}
        if len(frames) != 1 or len(shapes) != 1 or len(next(iter(frames))) != 1:
            return None
        plate, shape = next(iter(frames))[0], next(iter(shapes))
        if len(shape) != 1:
            return None
        values = {name: site["value"] for name, site in self.sites.items()}
        sites = self._plate_sites({**given, **values}, plate)
        if any(jnp.shape(site["fn"].log_prob(site["value"])) != shape for site in sites):
            return None
        return plate

    def _plate_sites(self, values, plate: str) -> list:
        """Sample sites (observed, latent, factors) of ``plate`` with ``values`` substituted."""
        substituted = seed(substitute(self.abduction, data=dict(values)), jax.random.key(0))
        traced = trace(substituted).get_trace(*self.model_args, **self.model_kwargs)
        return [
            site
            for site in traced.values()
            if site["type"] == "sample"
            and any(frame.name == plate for frame in site["cond_indep_stack"])
        ]
