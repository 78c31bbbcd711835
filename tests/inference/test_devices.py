"""Data-parallel fits on several devices give the single-device answer.

JAX fixes its device count when it starts, so the two-device fit runs in a fresh Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (two CPU devices, as a user with two GPUs
would have two devices), and compares with a one-device fit in the same process.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from causalcell.inference import fit

SCRIPT = """
import json
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from causalcell.inference import Strata, fit

rng = np.random.default_rng(0)
labels = np.repeat(np.arange(4), 250)  # four conditions of 250 cells
x = rng.normal(size=(1000, 3)).astype(np.float32)
y = (x @ np.array([1.0, -2.0, 0.5]) + labels + 0.3 * rng.normal(size=1000)).astype(np.float32)


def model(x, y, labels):
    weights = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    offsets = numpyro.sample("b", dist.Normal(0.0, 3.0).expand([4]).to_event(1))
    with numpyro.plate("cells", x.shape[0]) as index:
        latent = numpyro.sample("z", dist.Normal(0.0, 1.0))
        mean = x[index] @ weights + offsets[labels[index]] + 0.1 * latent
        numpyro.sample("y", dist.Normal(mean, 0.3), obs=y[index])


def features(data, index):
    return jnp.concatenate([data["x"][index], data["y"][index, None]], axis=-1)


data = {"x": x, "y": y, "labels": labels}
fits = {}
for devices in (None, 2):
    # Two conditions per batch of 96 cells: condition batches and a split batch together.
    posterior = fit(model, data, num_steps=200, strata=Strata(labels, 2, 96), key=0,
                    progress_bar=False, devices=devices,
                    guide_kwargs={"encoder_inputs": features})
    fits[str(devices)] = {
        "devices": posterior.config["devices"],
        "losses": np.asarray(posterior.losses).tolist(),
        "params": [np.asarray(v).tolist() for v in jax.tree_util.tree_leaves(posterior.params)],
    }
try:  # 95 cells per step cannot be split over 2 devices
    fit(model, data, num_steps=1, batch_size=95, progress_bar=False, devices=2,
        guide_kwargs={"encoder_inputs": features})
    uneven = None
except ValueError as error:
    uneven = str(error)
print(json.dumps({"count": jax.device_count(), "fits": fits, "uneven": uneven}))
"""


@pytest.fixture(scope="module")
def two_device_fits():
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_fit_on_two_devices_gives_the_single_device_answer(two_device_fits):
    assert two_device_fits["count"] == 2
    one, two = two_device_fits["fits"]["None"], two_device_fits["fits"]["2"]
    assert (one["devices"], two["devices"]) == (1, 2)
    # Same random draws, the same sums in another order: float32 rounding (relative 1e-7 per
    # sum) compounded over 200 Adam steps. 1e-4 leaves room for other CPUs' rounding and stays
    # far below any real difference (another batch changes the loss by percents).
    losses_one, losses_two = np.asarray(one["losses"]), np.asarray(two["losses"])
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)
    # Every parameter: the globals' AutoNormal and the encoder's weights.
    assert len(one["params"]) == len(two["params"]) > 4
    for value_one, value_two in zip(one["params"], two["params"], strict=True):
        np.testing.assert_allclose(np.asarray(value_two), np.asarray(value_one), atol=1e-4)
    assert "pass a batch_size that is a multiple of 2" in two_device_fits["uneven"]


def test_more_devices_than_jax_sees_raise_before_fitting():
    def model(values):
        with numpyro.plate("cells", values.shape[0]) as index:
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=values[index])

    data = {"values": jax.numpy.zeros(10)}
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        fit(model, data, guide="normal", devices=jax.device_count() + 1, num_steps=1)
    with pytest.raises(ValueError, match="at most"):
        fit(model, data, guide="normal", devices=0, num_steps=1)
