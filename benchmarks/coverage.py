"""Coverage of ATE credible intervals over repeated simulated datasets.

Usage::

    python benchmarks/coverage.py [--datasets 100] [--units 40]

Each dataset draws ``x ~ N(0, 1)``, ``y = 1.2 x + 0.8 e``; NUTS fits ``y ~ Normal(b x, scale)``
and ``causalcell.queries.effect`` gives the posterior of ``E[y | do(x=1)] - E[y | do(x=0)]``.
Prints the fraction of datasets whose HDI covers the true effect 1.2, for several levels, with
the binomial standard error of that fraction.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from causalcell.queries import effect

TRUE_EFFECT = 1.2
LEVELS = (0.5, 0.8, 0.9, 0.95)


def regression(x=None, y=None, num_units=1):
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))
    num_units = num_units if x is None else x.shape[0]
    with numpyro.plate("units", num_units):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        numpyro.sample("y", dist.Normal(b * x, scale), obs=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--units", type=int, default=40)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    sampler = MCMC(
        NUTS(regression), num_warmup=400, num_samples=800, progress_bar=False, jit_model_args=True
    )
    covered = np.zeros(len(LEVELS))
    started = time.perf_counter()
    for index in range(arguments.datasets):
        x = rng.normal(size=arguments.units)
        y = TRUE_EFFECT * x + 0.8 * rng.normal(size=arguments.units)
        sampler.run(jax.random.key(index), jnp.asarray(x), jnp.asarray(y))
        result = effect(
            regression,
            treatment="x",
            values=(0.0, 1.0),
            outcome="y",
            key=jax.random.key(10_000 + index),
            posterior_samples=sampler.get_samples(),  # b and scale: x and y are observed
            num_noise_samples=4,
        )
        for position, level in enumerate(LEVELS):
            lower, upper = result.hdi(level, "effect")
            covered[position] += lower <= TRUE_EFFECT <= upper
    elapsed = time.perf_counter() - started
    count = arguments.datasets
    print(f"# ATE interval coverage: {count} datasets x {arguments.units} units ({elapsed:.0f} s)")
    print(f"{'nominal':>8}{'covered':>9}{'rate':>7}{'binomial s.e.':>15}")
    for level, hits in zip(LEVELS, covered, strict=True):
        standard_error = np.sqrt(level * (1 - level) / count)
        print(f"{level:>8.2f}{int(hits):>9}{hits / count:>7.2f}{standard_error:>15.3f}")


if __name__ == "__main__":
    main()
