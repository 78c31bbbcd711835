"""``fit``: minibatch SVI with jitted chunks of steps, divergence guard and checkpoints."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO, init_to_median
from numpyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from tqdm.auto import tqdm

from causalcell._core.errors import CausalcellWarning
from causalcell._core.keys import as_key
from causalcell.inference._devices import data_parallel, gather
from causalcell.inference._guides import AmortizedGuide
from causalcell.inference._kronecker import AutoKroneckerNormal
from causalcell.inference._posterior import Posterior
from causalcell.inference._serialization import load_tree, save_tree
from causalcell.inference._subsample import Strata, subsample

__all__ = ["EarlyStopping", "FitDivergedError", "fit"]

#: The auto-guides ``fit`` builds by name (besides ``"amortized"``).
_AUTO_GUIDES = {
    "normal": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "kronecker": AutoKroneckerNormal,
    "delta": AutoDelta,
}
GUIDES = ("amortized", *_AUTO_GUIDES)


class FitDivergedError(RuntimeError):
    """The loss became non-finite; ``posterior`` holds the last good parameters."""

    def __init__(self, message: str, posterior: Posterior):
        super().__init__(message)
        self.posterior = posterior


class EarlyStopping(NamedTuple):
    """Stop when the mean loss of a chunk has not improved by ``min_delta`` (relative) for
    ``patience`` chunks in a row."""

    patience: int = 5
    min_delta: float = 1e-3


#: Data up to this size (bytes) are compiled into the jitted initialisation as constants.
JIT_INIT_LIMIT = 64 * 2**20


def _initialise(make_svi: Callable, key, data: Mapping, model_kwargs: Mapping):
    """``(svi, guide, state, compiled)``: a fresh ``make_svi()`` and its initial state, computed
    as one compiled program when possible (``compiled``).

    Eager, NumPyro's ``SVI.init`` runs the model and guide operation by operation (the guide's
    prototype trace and the search for valid initial parameters), and each operation compiles
    on its own: on 2 CPU cores that was 40 s of a 70 s LCD fit, 779 compilations. Under
    ``jax.jit`` it is one compilation, about 4x faster, with the same numbers up to float
    rounding. The data are closed over, so they become constants of that program (the guide
    keeps functions of the model's arguments for later use, which must not be tracers): above
    :data:`JIT_INIT_LIMIT` bytes, or for a model or guide that needs concrete values during
    initialisation (Python control flow on sampled values), the initialisation is eager.
    """
    if sum(value.nbytes for value in data.values()) <= JIT_INIT_LIMIT:  # device arrays
        svi, guide = make_svi()
        try:
            state = jax.jit(lambda key: svi.init(key, **data, **model_kwargs))(key)
            return svi, guide, state, True
        except jax.errors.JAXTypeError:
            pass  # a fresh SVI below: the failed one's guide may hold a partial prototype
    svi, guide = make_svi()
    return svi, guide, svi.init(key, **data, **model_kwargs), False


def _make_guide(guide, model, plate: str, guide_kwargs: Mapping):
    if callable(guide) and not isinstance(guide, str):
        return guide
    if guide == "amortized":
        return AmortizedGuide(model, plate=plate, **guide_kwargs)
    if not isinstance(guide, str) or guide not in _AUTO_GUIDES:
        raise ValueError(f"guide must be one of {GUIDES} or a callable guide, got {guide!r}.")
    # Auto-guides start at the prior medians (see AmortizedGuide) unless told otherwise.
    guide_kwargs = {"init_loc_fn": init_to_median(num_samples=15), **guide_kwargs}
    return _AUTO_GUIDES[guide](model, **guide_kwargs)


def _chunk_runner(svi: SVI, size: int, model_kwargs: Mapping):
    """A jitted function running up to ``size`` SVI steps, stopping at the first non-finite loss.

    ``run(state, data, length)`` runs the first ``length <= size`` steps of a ``size``-step scan
    (the rest are skipped by ``lax.cond``): the number of steps is data, not shape, so a fit
    compiles one runner whatever its last chunk's length (a 150-step fit compiled a second
    scan for its last 50 steps, as long to compile as the first).

    The loss of an update is evaluated at the parameters *before* it, so when the loss of step
    ``k`` is non-finite the last good parameters are those of step ``k - 1``: the runner keeps
    them. Returns the state (the last good one after a divergence), the ``size`` losses (those
    from ``length`` on are zero) and the offset of the first non-finite loss in the chunk
    (``length`` when all were finite).
    """

    # Both branches of lax.cond return the loss in the default float type (float64 under x64),
    # so the skipped branch needs no trace of the update to learn its dtype.
    loss_dtype = jnp.result_type(float)

    def run(state, data, length):
        def update(state):
            new_state, loss = svi.update(state, **data, **model_kwargs)
            return new_state, jnp.asarray(loss, loss_dtype)

        def skip(state):
            return state, jnp.zeros((), loss_dtype)

        def step(carry, _):
            state, last_good, diverged_at, position = carry
            new_state, loss = jax.lax.cond(position < length, update, skip, state)
            running = diverged_at == length
            good = jnp.isfinite(loss) & running
            last_good = _select(good, state, last_good)
            diverged_at = jnp.where(running & ~good, position, diverged_at)
            state = _select(good, new_state, state)
            return (state, last_good, diverged_at, position + 1), loss

        start = (state, state, length, jnp.zeros_like(length))
        (state, last_good, diverged_at, _), losses = jax.lax.scan(step, start, None, length=size)
        return _select(diverged_at < length, last_good, state), losses, diverged_at

    return jax.jit(run)


def _select(condition, when_true, when_false):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), when_true, when_false)


def fit(
    model,
    data: Mapping,
    *,
    guide="amortized",
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 2000,
    batch_size: int | None = None,
    key: int | jax.Array = 0,
    model_kwargs: Mapping | None = None,
    plate: str = "cells",
    loss=None,
    chunk_size: int = 100,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 1000,
    early_stopping: EarlyStopping | None = None,
    on_divergence: str = "raise",
    progress_bar: bool = True,
    guide_kwargs: Mapping | None = None,
    strata: Strata | None = None,
    devices: int | Sequence | None = None,
) -> Posterior:
    """Fit a NumPyro model by (minibatch) stochastic variational inference.

    The model is called as ``model(**data, **model_kwargs)`` and opens its per-cell plate
    without a subsample size (``with numpyro.plate("cells", n) as index:``), indexing per-cell
    arrays with ``index``; ``batch_size`` minibatches that plate from outside (see
    :class:`causalcell.inference.subsample`). Data go to the device once; steps run in jitted
    chunks of ``chunk_size`` (a ``lax.scan``), so no Python work per step.

    Parameters
    ----------
    model
        A NumPyro program.
    data
        Arrays passed to the model as keyword arguments.
    guide
        ``"amortized"`` (:class:`AmortizedGuide`: encoder for per-cell sites, AutoNormal for the
        rest), ``"normal"``, ``"lowrank"``, ``"kronecker"`` (:class:`AutoKroneckerNormal`:
        real matrix sites with correlated rows and columns, the rest mean-field), ``"delta"``, or
        a guide callable.
    optimizer
        An optax transformation; ``optax.adam(1e-3)`` by default.
    num_steps
        Total SVI steps.
    batch_size
        Cells per step (``None``: all cells).
    key
        Seed or PRNG key: the same key gives the same fit, bit for bit.
    model_kwargs
        Non-array keyword arguments of the model (static under jit).
    loss
        A NumPyro ELBO; ``Trace_ELBO()`` by default.
    chunk_size
        Steps per jitted chunk (progress-bar and divergence-check granularity).
    checkpoint
        A file to save the optimiser state to every ``checkpoint_every`` steps; if it exists
        when ``fit`` starts, the fit resumes from it and ends exactly as an uninterrupted run.
    early_stopping
        Optional plateau rule on chunk-mean losses.
    on_divergence
        ``"raise"`` (:class:`FitDivergedError` carrying the last good posterior) or ``"warn"``
        (a :class:`causalcell.CausalcellWarning`; the last good posterior is returned).
    progress_bar
        Show a tqdm bar with the running loss.
    guide_kwargs
        Extra arguments of the guide constructor (e.g. ``encoder_inputs``, ``hidden``).
    strata
        Optional :class:`causalcell.inference.Strata` of the plate's elements: each batch is
        drawn stratum by stratum (still unbiased), its size replaces ``batch_size``, and a
        model that asks :func:`causalcell.inference.batch_strata` does per-stratum work only
        for the batch's strata (LCD: one stationary law per condition of the batch).
    devices
        Data-parallel fit on several devices: a count of ``jax.devices()`` or the devices
        themselves. Data and state are replicated, each batch's cells are split evenly over
        the devices (``batch_size`` must be a multiple of their number), and the answer is the
        single-device one up to float rounding. ``None`` (default): JAX's default device.

    Returns
    -------
    Posterior
        With ``params``, the loss history ``losses`` and the fit settings in ``config``.

    Raises
    ------
    FitDivergedError
        If the loss becomes non-finite and ``on_divergence="raise"``.
    ValueError
        For bad settings or a checkpoint from a different fit.

    References
    ----------
    Hoffman, M. D., Blei, D. M., Wang, C. & Paisley, J. (2013). Stochastic variational
    inference. JMLR 14.
    """
    if on_divergence not in ("raise", "warn"):
        raise ValueError(f"on_divergence must be 'raise' or 'warn', got {on_divergence!r}.")
    if num_steps < 1 or chunk_size < 1:
        raise ValueError(
            f"num_steps and chunk_size must be positive, got {num_steps}, {chunk_size}."
        )
    chunk_size = min(chunk_size, num_steps)
    checkpoint_every = max(chunk_size, checkpoint_every - checkpoint_every % chunk_size)
    model_kwargs = dict(model_kwargs or {})
    if strata is not None:
        batch_size = strata.batch_size
    parallel = data_parallel(devices)
    data = {name: jnp.asarray(value) for name, value in data.items()}  # on the device, once
    step_data = data if parallel is None else jax.device_put(data, parallel.replicated)
    key = as_key(key)
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)

    def make_svi():
        guide_object = _make_guide(guide, model, plate, dict(guide_kwargs or {}))
        svi = SVI(
            subsample(model, plate, batch_size, strata, parallel),
            subsample(guide_object, plate, batch_size, strata, parallel),
            optimizer,
            loss if loss is not None else Trace_ELBO(),
        )
        return svi, guide_object

    svi, guide_object, state, compiled = _initialise(make_svi, key, data, model_kwargs)
    config = {
        # How the guide set itself up: a loaded posterior's guide must do the same (an
        # auto-guide's flattened latent orders its sites by name when traced, in program order
        # when eager; see _posterior_files.ready_guide).
        "compiled_setup": compiled,
        "method": "svi",
        "guide": guide if isinstance(guide, str) else type(guide).__name__,
        "optimizer": repr(optimizer),
        "num_steps": num_steps,
        "batch_size": batch_size,
        "strata_per_batch": None if strata is None else strata.groups,
        "devices": 1 if parallel is None else parallel.count,
        "chunk_size": chunk_size,
        "plate": plate,
        "model_kwargs": {name: repr(value) for name, value in model_kwargs.items()},
    }
    losses: list[np.ndarray] = []
    step = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state, losses, step = _resume(checkpoint, state, config)
    if parallel is not None:
        state = jax.device_put(state, parallel.replicated)
    runner = _chunk_runner(svi, chunk_size, model_kwargs)
    chunk_seconds: list[float] = []
    best, stale = None, 0
    diverged = None
    bar = tqdm(total=num_steps, initial=step, disable=not progress_bar, desc="SVI", unit="step")
    try:
        while step < num_steps:
            length = min(chunk_size, num_steps - step)
            started = time.perf_counter()
            state, chunk_losses, diverged_at = runner(
                state, step_data, jnp.asarray(length, jnp.int32)
            )
            chunk_losses = np.asarray(chunk_losses)[:length]  # waits for the chunk to finish
            chunk_seconds.append(time.perf_counter() - started)
            diverged_at = int(diverged_at)
            if diverged_at < length:
                losses.append(chunk_losses[:diverged_at])
                diverged = step + diverged_at
                step += diverged_at
                break
            losses.append(chunk_losses)
            step += length
            mean_loss = float(chunk_losses.mean())
            bar.update(length)
            bar.set_postfix(loss=f"{mean_loss:.4g}")
            if checkpoint is not None and (step % checkpoint_every == 0 or step == num_steps):
                _save_checkpoint(checkpoint, state, losses, step, config)
            if early_stopping is not None:
                if best is None or mean_loss < best - early_stopping.min_delta * abs(best):
                    best, stale = mean_loss, 0
                else:
                    stale += 1
                    if stale >= early_stopping.patience:
                        config["stopped_early_at"] = step
                        break
    finally:
        bar.close()
    history = np.concatenate(losses) if losses else np.zeros(0)
    config["steps_run"] = step
    # Wall time of each chunk (the first includes compilation): the throughput record.
    config["chunk_seconds"] = chunk_seconds
    if diverged is not None:
        config["diverged_at"] = diverged
    posterior = Posterior(
        model,
        method="svi",
        data=data,
        model_kwargs=model_kwargs,
        guide=guide_object,
        params=svi.get_params(state if parallel is None else gather(state)),
        losses=history,
        config=config,
        plate=plate,
    )
    if diverged is not None:
        message = (
            f"The loss became non-finite at step {diverged}; stopped and kept the parameters of "
            f"step {diverged - 1}. Try a smaller learning rate (e.g. optax.adam(1e-4)), "
            "optax.clip_by_global_norm before the optimiser, a larger batch_size, or check the "
            "data for NaN/inf and the model for unbounded link functions."
        )
        if on_divergence == "raise":
            raise FitDivergedError(message, posterior)
        warnings.warn(message, CausalcellWarning, stacklevel=2)
    return posterior


def _checkpoint_metadata(config: Mapping, step: int) -> dict:
    # The optimiser has no comparable form (optax closures); its state is checked leaf by leaf
    # (structure, shapes, dtypes) when the checkpoint is loaded into the fresh state.
    names = (
        "guide",
        "num_steps",
        "batch_size",
        "strata_per_batch",
        "chunk_size",
        "plate",
        "model_kwargs",
    )
    fixed = {name: config[name] for name in names}
    return {"kind": "causalcell.fit checkpoint", "step": step, "config": fixed}


def _save_checkpoint(path, state, losses, step, config) -> None:
    history = np.concatenate(losses) if losses else np.zeros(0)
    tree = {"state": state, "losses": history}
    save_tree(path, tree, _checkpoint_metadata(config, step))


def _resume(path, state, config):
    template = {"state": state, "losses": np.zeros(0)}
    tree, metadata = load_tree(path, template, allow_shape_change=("losses",))
    if metadata.get("kind") != "causalcell.fit checkpoint":
        raise ValueError(f"{path} is not a causalcell fit checkpoint.")
    expected = _checkpoint_metadata(config, metadata["step"])["config"]
    if metadata["config"] != expected:
        changed = sorted(k for k in expected if metadata["config"].get(k) != expected[k])
        saved = json.dumps({name: metadata["config"].get(name) for name in changed})
        raise ValueError(
            f"Checkpoint {path} comes from a fit with different settings ({', '.join(changed)}: "
            f"{saved}); delete it or pass the same settings to resume."
        )
    return tree["state"], [np.asarray(tree["losses"])], int(metadata["step"])
