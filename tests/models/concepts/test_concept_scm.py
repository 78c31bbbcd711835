"""The concept SCM on arrays: exact Gumbel abduction against rejection sampling, graph surgery,
and the spec's checks."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from causalcell.graph import CyclicGraphError
from causalcell.models.concepts import ConceptSpec, abduct_gumbel, intervene, sample_levels

LOGITS = jnp.array([0.3, -0.5, 1.2])


def _chain():
    """``a -> b -> c`` and an isolated ``d``, with fixed mechanisms."""
    graph = nx.DiGraph([("a", "b"), ("b", "c")])
    graph.add_node("d")
    spec = ConceptSpec.from_graph(graph, {"a": "xy", "b": "pqr", "c": "uv", "d": "st"})
    values = {
        "bias_a": jnp.array([0.2, -0.2]),
        "bias_b": jnp.array([0.0, 0.5, -0.3]),
        "bias_c": jnp.array([0.1, -0.1]),
        "bias_d": jnp.array([0.0, 0.0]),
        "weight_a_b": jnp.array([[1.5, -1.0, 0.0], [-1.0, 0.8, 0.6]]),
        "weight_b_c": jnp.array([[1.0, -1.0], [-0.5, 0.5], [0.0, 1.2]]),
    }
    return spec, values


def test_abducted_gumbel_noise_reproduces_the_label_and_follows_the_posterior():
    """The abducted noise gives back the observed level every time, and its law is the prior's
    conditioned on that level (rejection sampling from the prior as the exact reference)."""
    draws = 200_000
    observed = jnp.full((draws,), 1)
    noise = abduct_gumbel(jax.random.key(0), jnp.broadcast_to(LOGITS, (draws, 3)), observed)
    assert bool(jnp.all(jnp.argmax(LOGITS + noise, axis=-1) == 1))
    prior = jax.random.gumbel(jax.random.key(1), (4 * draws, 3))
    accepted = prior[jnp.argmax(LOGITS + prior, axis=-1) == 1]
    assert accepted.shape[0] > 20_000  # P(level 1) is about 0.12
    # Means and standard deviations per level agree within 0.03: the Monte Carlo error of the
    # accepted sample (sd about 1.3 over 25k draws) is under 0.01, so 0.03 is 3+ of them.
    np.testing.assert_allclose(noise.mean(0), accepted.mean(0), atol=0.03)
    np.testing.assert_allclose(noise.std(0), accepted.std(0), atol=0.03)


def test_counterfactual_levels_match_rejection_sampling():
    """P(b' | a = x, b = p, do(a = y)) by abduction equals the exact answer: prior Gumbel noise
    of b kept when it reproduces b = p under a = x, then the argmax under a = y."""
    spec, values = _chain()
    cells = 100_000
    observed = jnp.tile(jnp.array([[0, 0, 0, 0]]), (cells, 1))
    changed = intervene(jax.random.key(2), values, spec, observed, {0: 1})
    share = np.bincount(np.asarray(changed[:, 1]), minlength=3) / cells
    logits_x = values["bias_b"] + values["weight_a_b"][0]
    logits_y = values["bias_b"] + values["weight_a_b"][1]
    prior = jax.random.gumbel(jax.random.key(3), (2_000_000, 3))
    kept = prior[jnp.argmax(logits_x + prior, axis=-1) == 0]
    exact = np.bincount(np.asarray(jnp.argmax(logits_y + kept, axis=-1)), minlength=3)
    exact = exact / exact.sum()
    # Two Monte Carlo estimates of probabilities: sd at most 0.5 / sqrt(1e5) = 0.0016 each.
    np.testing.assert_allclose(share, exact, atol=0.008)
    assert exact[0] < 0.9  # the intervention moves cells


def test_surgery_keeps_non_descendants_and_sets_the_intervened_concept():
    spec, values = _chain()
    observed = sample_levels(jax.random.key(4), values, spec, (500,), {})
    changed = intervene(jax.random.key(5), values, spec, observed, {spec.index("b"): 2})
    assert bool(jnp.all(changed[:, spec.index("b")] == 2))
    for name in ("a", "d"):  # not downstream of b
        column = spec.index(name)
        assert bool(jnp.all(changed[:, column] == observed[:, column]))
    same = intervene(jax.random.key(6), values, spec, observed, {0: observed[:, 0]})
    assert bool(jnp.all(same == observed))  # setting a to its own value changes nothing


def test_sampled_levels_follow_the_mechanisms():
    spec, values = _chain()
    levels = sample_levels(jax.random.key(7), values, spec, (200_000,), {0: 0})
    share = np.bincount(np.asarray(levels[:, 1]), minlength=3) / levels.shape[0]
    expected = jax.nn.softmax(values["bias_b"] + values["weight_a_b"][0])
    np.testing.assert_allclose(share, expected, atol=0.005)  # sd of each share below 0.0012


def test_spec_orders_concepts_and_names_bad_graphs():
    spec, _ = _chain()
    assert spec.names.index("a") < spec.names.index("b") < spec.names.index("c")
    assert spec.edges == (("a", "b"), ("b", "c"))
    assert spec.descendants({spec.index("a")}) == {spec.index("b"), spec.index("c")}
    with pytest.raises(ValueError, match="not in the graph"):
        ConceptSpec.from_graph(nx.DiGraph([("a", "b")]), {"a": "xy", "b": "xy", "c": "xy"})
    with pytest.raises(ValueError, match="fewer than 2 levels"):
        ConceptSpec.from_graph(nx.DiGraph([("a", "b")]), {"a": "x", "b": "xy"})
    with pytest.raises(CyclicGraphError):
        ConceptSpec.from_graph(nx.DiGraph([("a", "b"), ("b", "a")]), {"a": "xy", "b": "xy"})
    with pytest.raises(ValueError, match="no level 'z'"):
        spec.level("a", "z")
