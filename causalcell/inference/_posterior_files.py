"""Posterior files: what identifies a model and its guide, and saving and loading posteriors."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Mapping

import jax
import numpy as np
from numpyro.handlers import block, replay, seed, trace
from numpyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuide,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from causalcell.inference._guides import AmortizedGuide, default_encoder_inputs
from causalcell.inference._serialization import DICT_KEY, load_tree, read_header, save_tree
from causalcell.inference._subsample import subsample
from causalcell.inference._trace import abstract_trace, split_data

__all__ = [
    "describe_model",
    "guide_spec",
    "load_posterior_arguments",
    "model_fingerprint",
    "param_template",
    "qualified_name",
    "ready_guide",
    "rebuild_guide",
    "save_posterior",
    "site_differences",
    "stored_template",
]


def qualified_name(function) -> str:
    """``module.qualname`` of a function, class or callable object (partials unwrapped)."""
    function = getattr(function, "func", function)  # functools.partial
    module = getattr(function, "__module__", None) or type(function).__module__
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}"


def describe_model(model, data: Mapping, model_kwargs: Mapping, plate: str):
    """Sample sites of ``model`` run on ``data``: ``({site: description}, num_cells)``.

    A description is ``{"shape", "plates", "observed"}`` with the per-cell axis of the shape
    written ``"cells"``; the model is traced abstractly (:func:`abstract_trace`).
    """
    sites = abstract_trace(model, {**data, **model_kwargs})
    table = {}
    for name, site in sites.items():
        if site["type"] != "sample":
            continue
        shape: list = list(site["shape"])
        if plate in site["plates"]:
            shape[site["plates"][plate] - len(site["event_shape"])] = "cells"
        table[name] = {
            "shape": shape,
            "plates": sorted(site["plates"]),
            "observed": site["observed"],
        }
    plate_site = sites.get(plate, {})
    return table, plate_site["size"] if plate_site.get("type") == "plate" else None


def model_fingerprint(sites: Mapping) -> str:
    """sha256 of the canonical JSON of every site's name, shape and plates."""
    canonical = {name: [site["shape"], site["plates"]] for name, site in sites.items()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def site_differences(saved: Mapping, current: Mapping) -> str:
    """The sites that differ between two :func:`describe_model` tables, as one sentence."""
    parts = []
    for name in sorted(saved.keys() | current.keys()):
        if name not in current:
            parts.append(f"site {name!r} is missing from the model")
        elif name not in saved:
            parts.append(f"site {name!r} (shape {current[name]['shape']}) is not in the file")
        else:
            before = (saved[name]["shape"], saved[name]["plates"])
            after = (current[name]["shape"], current[name]["plates"])
            if before != after:
                parts.append(
                    f"site {name!r} has shape {before[0]} in plates {before[1]} in the file but "
                    f"{after[0]} in plates {after[1]} in the model"
                )
    return "; ".join(parts)


def guide_spec(guide) -> dict | None:
    """What a file records of the guide: its class, and the settings that fix its parameters."""
    if guide is None:
        return None
    spec = {"kind": qualified_name(type(guide))}
    if isinstance(guide, AmortizedGuide):
        spec.update(
            hidden=list(guide.hidden),
            global_guide=guide.global_guide_kind,
            rank=guide.rank,
            plate=guide.plate,
            key=guide.key,
            point_estimates=list(guide.point_estimates),
            # Whether the file alone rebuilds the guide: no custom function changes what it
            # computes. (init_values only set where the fit started, so they do not count.)
            default_inputs=guide.encoder_inputs is default_encoder_inputs
            and not guide.encoder_offsets
            and guide.local_posterior is None,
        )
    elif isinstance(guide, AutoGuide):
        spec.update(prefix=guide.prefix, rank=getattr(guide, "rank", None))
    return spec


#: Auto-guides whose parameters are fixed by the model, the prefix and the rank alone.
_REBUILDABLE = {
    qualified_name(kind): kind
    for kind in (
        AutoNormal,
        AutoDelta,
        AutoDiagonalNormal,
        AutoMultivariateNormal,
        AutoLowRankMultivariateNormal,
    )
}


def rebuild_guide(spec: Mapping, model):
    """A guide equal in parameter structure to the one described by ``spec``, for ``model``."""
    if spec["kind"] == qualified_name(AmortizedGuide) and spec["default_inputs"]:
        settings = {name: spec[name] for name in ("hidden", "global_guide", "rank", "plate", "key")}
        point_estimates = tuple(spec.get("point_estimates", ()))  # absent in older files
        return AmortizedGuide(model, point_estimates=point_estimates, **settings)
    if spec["kind"] in _REBUILDABLE:
        kind = _REBUILDABLE[spec["kind"]]
        rank = {"rank": spec["rank"]} if kind is AutoLowRankMultivariateNormal else {}
        return kind(model, prefix=spec["prefix"], **rank)
    raise ValueError(
        f"The file was saved with a guide {spec['kind']} that cannot be rebuilt from the file "
        "alone (custom encoder inputs, encoder offsets, local posterior or guide class); pass "
        "guide=... as constructed for the fit."
    )


def stored_template(header: Mapping, groups) -> dict:
    """Template of the stored dict-of-arrays ``groups`` (e.g. NUTS samples), from the leaf table."""
    template: dict = {}
    for entry in header["leaves"]:
        keys = [ast.literal_eval(key) for key in re.findall(DICT_KEY, entry["path"])]
        if keys[0] in groups:
            leaf = jax.ShapeDtypeStruct(tuple(entry["shape"]), np.dtype(entry["dtype"]))
            if len(keys) == 1:
                template[keys[0]] = leaf
            else:
                template.setdefault(keys[0], {})[keys[1]] = leaf
    return template


def ready_guide(guide, data: Mapping, plate: str, traced: bool = False) -> None:
    """Let a guide set itself up (prototype trace, encoder) on one subsampled cell: eagerly, or
    under a trace (``jax.eval_shape``) where the fit's initialisation was compiled.

    The two orders an auto-guide's flattened latent vector differently: NumPyro keeps the
    program's order of the sites when it runs eagerly and sorts them by name when traced (its
    initial values come back as a pytree). A full-rank or low-rank global guide loaded with
    the other order than its fit read every draw off the wrong coordinates.
    """
    needs_setup = (isinstance(guide, AmortizedGuide) and guide.local_shapes is None) or (
        isinstance(guide, AutoGuide) and guide.prototype_trace is None
    )
    if not needs_setup:
        return
    setup = seed(subsample(guide, plate, 1), 0)
    with block():
        if traced:  # as in the fit, arrays (not NumPy's) that a traced index can select from
            arrays, others = split_data(data)
            arrays = {name: jax.numpy.asarray(value) for name, value in arrays.items()}
            jax.eval_shape(lambda: setup(**arrays, **others))
        else:
            setup(**data)


def param_template(model, guide, data: Mapping, plate: str, traced: bool = False) -> dict:
    """Shapes and tree structure of the model's and the guide's parameters, traced abstractly
    (the guide set up as :func:`ready_guide` says)."""
    ready_guide(guide, data, plate, traced)
    arrays, others = split_data(data)

    def run(arrays):
        guide_trace = trace(seed(guide, 0)).get_trace(**others, **arrays)
        model_trace = trace(replay(seed(model, 1), guide_trace)).get_trace(**others, **arrays)
        return {
            name: site["value"]
            for site_trace in (guide_trace, model_trace)
            for name, site in site_trace.items()
            if site["type"] == "param"
        }

    return jax.eval_shape(run, arrays)


_KIND = "causalcell.Posterior"


def save_posterior(posterior, path) -> None:
    """Body of :meth:`Posterior.save`: parameters or draws plus the model's identity."""
    sites, num_cells = posterior.describe()
    metadata = {
        "kind": _KIND,
        "method": posterior.method,
        "model": {
            "name": qualified_name(posterior.model),
            "fingerprint": model_fingerprint(sites),
            "sites": sites,
        },
        "num_cells": num_cells,
        "plate": posterior.plate,
        "guide": guide_spec(posterior.guide),
        "num_chains": posterior.num_chains,
        "config": posterior.config,
    }
    tree = (
        {"params": posterior.params}
        if posterior.method == "svi"
        else {"samples": posterior.samples}
    )
    if posterior.sample_stats:
        tree["sample_stats"] = posterior.sample_stats
    if posterior.losses is not None:
        tree["losses"] = posterior.losses
    save_tree(path, tree, metadata)


def load_posterior_arguments(path, model, data, guide, model_kwargs) -> dict:
    """Body of :meth:`Posterior.load`: the constructor arguments, checked against the file."""
    header = read_header(path)
    metadata = header["metadata"]
    if metadata.get("kind") != _KIND:
        raise ValueError(f"{path} is not a saved Posterior (kind {metadata.get('kind')!r}).")
    model_kwargs = dict(model_kwargs or {})
    plate = metadata["plate"]
    sites, num_cells = describe_model(model, data, model_kwargs, plate)
    saved, name = metadata["model"], qualified_name(model)
    if saved["name"] != name or saved["fingerprint"] != model_fingerprint(sites):
        differences = site_differences(saved["sites"], sites) or "the sample sites agree"
        models = (
            f"with model {name} and different sample sites"
            if saved["name"] == name
            else f"from model {saved['name']} but is loaded with model {name}"
        )
        raise ValueError(f"{path} was saved {models}: {differences}.")
    template = stored_template(header, ("samples", "sample_stats", "losses"))
    if metadata["method"] == "svi":
        if guide is None:
            guide = rebuild_guide(metadata["guide"], model)
        if qualified_name(type(guide)) != metadata["guide"]["kind"]:
            raise ValueError(
                f"{path} was saved with guide {metadata['guide']['kind']}, not "
                f"{qualified_name(type(guide))}."
            )
        traced = metadata["config"].get("compiled_setup", False)
        template["params"] = param_template(model, guide, {**data, **model_kwargs}, plate, traced)
    elif num_cells != metadata["num_cells"] and any(
        plate in site["plates"] and not site["observed"] for site in sites.values()
    ):
        raise ValueError(
            f"{path} holds NUTS draws for {metadata['num_cells']} cells but the data have "
            f"{num_cells}."
        )
    tree, _ = load_tree(path, template)
    return dict(
        model=model,
        method=metadata["method"],
        data=data,
        model_kwargs=model_kwargs,
        guide=guide,
        params=tree.get("params"),
        samples=tree.get("samples"),
        losses=tree.get("losses"),
        config=metadata["config"],
        plate=plate,
        num_chains=metadata["num_chains"],
        sample_stats=tree.get("sample_stats"),
    )
