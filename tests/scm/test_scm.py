"""SCM priors against the closed forms of a linear-Gaussian SCM Z -> X -> Y, Z -> Y."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.util import log_density

from causalcell.graph import CyclicGraphError, to_adjacency
from causalcell.handlers import do, knockout, learned, noise_scale, shift
from causalcell.interventions import from_targets
from causalcell.scm import LinearSCM, NonlinearSCM, StructuralDistribution

GRAPH = nx.DiGraph([("Z", "X"), ("Z", "Y"), ("X", "Y")])
SCM = LinearSCM(GRAPH)
WEIGHTS = np.array([0.8, -0.5, 1.5])  # Z -> X, Z -> Y, X -> Y (row-major adjacency order)
BIAS = np.array([0.3, -0.2, 1.0])
SCALE = np.array([1.0, 0.5, 0.7])
PARAMETERS = {"weights": WEIGHTS, "bias": BIAS, "scale": SCALE}
MATRIX = to_adjacency(
    nx.DiGraph({"Z": {"X": {"w": 0.8}, "Y": {"w": -0.5}}, "X": {"Y": {"w": 1.5}}}), weight="w"
)
W_ZX, W_ZY, W_XY = WEIGHTS
UNITS = 20_000


def moments(bias=BIAS, scale=SCALE):
    """Closed form: x = (I - W^T)^{-1} (b + s eps), so mean M b and covariance M diag(s^2) M^T."""
    inverse = np.linalg.inv(np.eye(3) - MATRIX.T)
    return inverse @ bias, inverse @ np.diag(scale**2) @ inverse.T


def run(model, key=0, **kwargs):
    return trace(seed(substitute(model, PARAMETERS), key)).get_trace(**kwargs)


def assert_moments(samples, mean, covariance):
    """Sample mean and covariance within 5 standard errors of the closed form.

    For n Gaussian draws, SE(mean_j) = sqrt(C_jj / n) and SE(cov_ij) = sqrt((C_ij^2 + C_ii C_jj)
    / n); 5 SE bounds each of the 3 + 6 checks with probability > 1 - 1e-5 (fixed key anyway).
    """
    samples = np.asarray(samples, dtype=float)
    size = samples.shape[0]
    diagonal = np.diag(covariance)
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * np.sqrt(diagonal / size))
    cov_error = np.sqrt((covariance**2 + np.outer(diagonal, diagonal)) / size)
    np.testing.assert_array_less(np.abs(np.cov(samples.T) - covariance), 5 * cov_error)


def test_edges_and_weight_matrix_follow_the_adjacency_convention():
    assert SCM.nodes == ("Z", "X", "Y") and SCM.depth == 2
    assert SCM.edges == (("Z", "X"), ("Z", "Y"), ("X", "Y"))
    np.testing.assert_array_equal(SCM.weight_matrix(WEIGHTS), np.float32(MATRIX))
    parents, children = np.nonzero(to_adjacency(GRAPH))
    assert SCM.edges == tuple((SCM.nodes[p], SCM.nodes[c]) for p, c in zip(parents, children))
    assert SCM.weight_matrix(jnp.ones((4, 3))).shape == (4, 3, 3)
    batched = np.broadcast_to(to_adjacency(GRAPH), (4, 3, 3))  # unit weights: the adjacency
    np.testing.assert_array_equal(SCM.weight_matrix(jnp.ones((4, 3))), batched)


def test_vectorised_law_is_the_closed_form_gaussian():
    law = run(SCM.vectorized, num_units=1)["genes"]["fn"]
    assert isinstance(law, StructuralDistribution) and law.batch_shape == (1,)
    mean, covariance = moments()
    x = np.random.default_rng(0).normal(size=(6, 3)) * 2.0
    expected = scipy.stats.multivariate_normal(mean, covariance).logpdf(x)
    # float32 evaluation of log densities of size ~10: a few roundings of 6e-8 relative each.
    np.testing.assert_allclose(law.log_prob(jnp.float32(x)), expected, rtol=1e-5, atol=1e-5)
    assert_moments(run(SCM.vectorized, num_units=UNITS)["genes"]["value"], mean, covariance)


def test_named_log_density_is_the_sum_of_node_normals_and_matches_the_vectorised_form():
    x = np.random.default_rng(1).normal(size=(5, 3))
    data = dict(zip(SCM.names, x.T))
    sites = run(SCM.named, data=data)
    named = sum(float(sites[name]["fn"].log_prob(sites[name]["value"]).sum()) for name in "ZXY")
    loc = BIAS + x @ MATRIX  # x_j = b_j + sum_i W_ij x_i
    by_hand = scipy.stats.norm(loc, SCALE).logpdf(x).sum()
    mean, covariance = moments()
    joint = scipy.stats.multivariate_normal(mean, covariance).logpdf(x).sum()
    # float32 sums of 15 terms of size ~1-10: error well under 1e-4.
    np.testing.assert_allclose([named, joint], by_hand, rtol=1e-5, atol=1e-4)
    with_priors_named, _ = log_density(SCM.named, (), {"data": data}, PARAMETERS)
    with_priors_vector, _ = log_density(SCM.vectorized, (jnp.float32(x),), {}, PARAMETERS)
    # Same float32 terms in both forms (priors included), added in a different order.
    np.testing.assert_allclose(with_priors_named, with_priors_vector, rtol=1e-6, atol=1e-4)
    assert all(sites[name]["cond_indep_stack"][0].name == "units" for name in "ZXY")
    assert all(not sites[name]["cond_indep_stack"] for name in PARAMETERS)


def test_hard_intervention_matches_the_truncated_factorisation():
    level = 2.0
    # Z keeps its law; Y = b_Y + W_ZY Z + W_XY x + s_Y eps: closed-form mean and variance.
    mean_y = BIAS[2] + W_ZY * BIAS[0] + W_XY * level
    var_y = W_ZY**2 * SCALE[0] ** 2 + SCALE[2] ** 2
    covariance = np.array([[SCALE[0] ** 2, W_ZY * SCALE[0] ** 2], [W_ZY * SCALE[0] ** 2, var_y]])
    mean = np.array([BIAS[0], mean_y])
    named = {
        "causalcell": run(do(SCM.named, {"X": level}), num_units=UNITS),
        "numpyro": run(numpyro.handlers.do(SCM.named, {"X": level}), num_units=UNITS),
    }
    for sites in named.values():
        samples = np.stack([sites["Z"]["value"], sites["Y"]["value"]], axis=-1)
        assert_moments(samples, mean, covariance)  # 5 SE, see assert_moments
    assert named["causalcell"]["X"]["type"] == "deterministic"
    vector = run(do(SCM.vectorized, {"genes": {"X": knockout(level=level)}}), num_units=UNITS)
    samples = vector["genes"]["value"]
    np.testing.assert_array_equal(samples[:, 1], level)
    assert_moments(samples[:, [0, 2]], mean, covariance)
    # Exact: the knocked-out node adds nothing; (Z, Y) is the Gaussian above.
    points = np.random.default_rng(2).normal(size=(4, 3))
    points[:, 1] = level
    expected = scipy.stats.multivariate_normal(mean, covariance).logpdf(points[:, [0, 2]])
    log_prob = vector["genes"]["fn"].log_prob(jnp.float32(points))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)  # float32, as above


def test_shift_and_noise_scale_change_the_law_as_the_closed_form_says():
    delta, factor = 1.5, 2.0
    actions = {"genes": {"X": shift(delta), "Z": noise_scale(factor)}}
    # A shift adds delta to b_X; a noise scale multiplies s_Z; the structure is unchanged.
    mean, covariance = moments(BIAS + np.array([0.0, delta, 0.0]), SCALE * [factor, 1.0, 1.0])
    sites = run(do(SCM.vectorized, actions), num_units=UNITS)
    assert_moments(sites["genes"]["value"], mean, covariance)  # 5 SE, see assert_moments
    x = np.random.default_rng(3).normal(size=(5, 3))
    expected = scipy.stats.multivariate_normal(mean, covariance).logpdf(x)
    log_prob = sites["genes"]["fn"].log_prob(jnp.float32(x))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)  # float32, as above


def test_noise_round_trip_and_counterfactual_closed_form():
    law = run(SCM.vectorized, num_units=1)["genes"]["fn"]
    x = jnp.float32(np.random.default_rng(4).normal(size=(7, 3)))
    noise = law.to_noise(x)
    # float32: two passes through 3 affine equations with O(1) coefficients.
    np.testing.assert_allclose(law.from_noise(noise), x, atol=1e-5)
    np.testing.assert_allclose(law.to_noise(law.from_noise(noise)), noise, atol=1e-5)
    # Counterfactual do(X = x'): same noise, so Z' = Z and Y' = Y + W_XY (x' - X), exactly.
    action = from_targets(3, [1], "knockout", 3.0)
    world = law.intervene(action).from_noise(noise)
    np.testing.assert_allclose(world[:, 0], x[:, 0], atol=1e-5)
    np.testing.assert_allclose(world[:, 2], x[:, 2] + W_XY * (3.0 - x[:, 1]), atol=1e-5)
    knocked_out = law.intervene(action)
    on_level = x.at[:, 1].set(3.0)
    np.testing.assert_array_equal(knocked_out.to_noise(on_level)[:, 1], 0.0)
    np.testing.assert_allclose(
        knocked_out.from_noise(knocked_out.to_noise(on_level)), on_level, atol=1e-5
    )


def test_nonlinear_named_and_vectorised_forms_agree():
    scm = NonlinearSCM(GRAPH, hidden=4)
    rng = np.random.default_rng(5)
    parameters = {
        "mlp_input_weights": rng.normal(size=(3, 4)),
        "mlp_hidden_bias": rng.normal(size=(2, 4)),
        "mlp_output_weights": rng.normal(size=(2, 4)),
        "bias": BIAS,
        "scale": SCALE,
    }
    x = rng.normal(size=(6, 3))
    named, _ = log_density(scm.named, (), {"data": dict(zip(scm.names, x.T))}, parameters)
    vector, sites = log_density(scm.vectorized, (jnp.float32(x),), {}, parameters)
    # Same float32 terms (priors included) in a different order.
    np.testing.assert_allclose(named, vector, rtol=1e-6, atol=1e-4)
    # X's mean by hand: b_X + sum_h v_h [tanh(U_h z + c_h) - tanh(c_h)] (X is network row 0).
    hidden_bias, output = parameters["mlp_hidden_bias"][0], parameters["mlp_output_weights"][0]
    change = np.tanh(np.outer(x[:, 0], parameters["mlp_input_weights"][0]) + hidden_bias)
    loc_x = BIAS[1] + (change - np.tanh(hidden_bias)) @ output
    noise = sites["genes"]["fn"].to_noise(jnp.float32(x))
    np.testing.assert_allclose(noise[:, 1], (x[:, 1] - loc_x) / SCALE[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(noise[:, 0], (x[:, 0] - BIAS[0]) / SCALE[0], rtol=1e-5)  # root
    prior = trace(seed(scm.named, 0)).get_trace(num_units=5)
    assert {name: prior[name]["value"].shape for name in ("Z", "X", "Y", "mlp_hidden_bias")} == {
        "Z": (5,),
        "X": (5,),
        "Y": (5,),
        "mlp_hidden_bias": (2, 4),
    }
    assert scm.network_nodes == ("X", "Y") and not prior["mlp_hidden_bias"]["cond_indep_stack"]
    # No built-in node with parents: no network sites, and the built-in means are the biases.
    rootless = NonlinearSCM(nx.DiGraph([("a", "b")]), mechanisms={"b": lambda p: 2.0 * p["a"]})
    parameters = {"bias": jnp.array([0.5]), "scale": jnp.array([1.0, 2.0])}
    sites = trace(seed(substitute(rootless.vectorized, parameters), 0)).get_trace(num_units=1)
    assert rootless.network_nodes == () and not any(name.startswith("mlp") for name in sites)
    noise = sites["genes"]["fn"].to_noise(jnp.float32([[1.0, 3.0]]))
    np.testing.assert_allclose(noise, [[(1.0 - 0.5) / 1.0, (3.0 - 2.0) / 2.0]], rtol=1e-6)


def test_user_mechanisms_are_used_and_their_parameters_are_global():
    def curve(parents):
        return parents["X"] ** 2 + numpyro.sample("offset", dist.Normal(0.0, 1.0))

    scm = LinearSCM(GRAPH, mechanisms={"Y": curve})
    assert scm.edges == (("Z", "X"),) and scm.builtin_nodes == ("Z", "X")
    x = np.random.default_rng(6).normal(size=(4, 3))
    parameters = {"weights": WEIGHTS[:1], "bias": BIAS[:2], "scale": SCALE, "offset": 0.5}
    _, sites = log_density(scm.named, (), {"data": dict(zip(scm.names, x.T))}, parameters)
    np.testing.assert_allclose(sites["Y"]["fn"].loc, x[:, 1] ** 2 + 0.5, rtol=1e-6)
    assert np.shape(sites["offset"]["value"]) == () and not sites["offset"]["cond_indep_stack"]
    named, _ = log_density(scm.named, (), {"data": dict(zip(scm.names, x.T))}, parameters)
    vector, sites = log_density(scm.vectorized, (jnp.float32(x),), {}, parameters)
    np.testing.assert_allclose(named, vector, rtol=1e-6, atol=1e-4)  # float32, reordered sums
    assert [name for name, site in sites.items() if site["type"] == "sample"].count("offset") == 1

    def whole(x):  # loc_Z = 0, loc_X = 2 Z, loc_Y = sin(X) + Z: only parents enter
        return jnp.stack([0.0 * x[..., 0], 2.0 * x[..., 0], jnp.sin(x[..., 1]) + x[..., 0]], -1)

    scm = LinearSCM(GRAPH, mechanisms=whole)
    law = trace(seed(substitute(scm.vectorized, {"scale": SCALE}), 0)).get_trace(num_units=1)
    loc = np.stack([0.0 * x[:, 0], 2.0 * x[:, 0], np.sin(x[:, 1]) + x[:, 0]], -1)
    noise = law["genes"]["fn"].to_noise(jnp.float32(x))
    np.testing.assert_allclose(noise, (x - loc) / SCALE, rtol=1e-5, atol=1e-5)  # float32
    assert "bias" not in law and "weights" not in law


def test_clear_errors():
    with pytest.raises(CyclicGraphError, match="a -> b -> c -> a"):
        LinearSCM(nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")]))
    with pytest.raises(KeyError, match=r"'Q'.*\['Z', 'X', 'Y'\]"):
        LinearSCM(GRAPH, mechanisms={"Q": lambda parents: 0.0})
    with pytest.raises(KeyError, match="Did you mean 'X'"):
        seed(SCM.named, 0)(data={"X1": np.zeros(3)})
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*\(5,\)"):
        seed(SCM.named, 0)(data={"X": np.zeros((5, 2))}, num_units=5)
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*\(5, 3\)"):
        seed(SCM.vectorized, 0)(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="num_units"):
        seed(SCM.vectorized, 0)()
    with pytest.raises(ValueError, match="broadcast"):
        LinearSCM(GRAPH, weight_prior=dist.Normal(jnp.zeros(2), 1.0))
    # An SCM has no learned intervention: knockout() without a level and learned() are
    # rejected when the model runs, under jit too (the request is a Python value).
    for request in (knockout(), learned()):
        off = do(SCM.vectorized, {"genes": {"X": request}})
        with pytest.raises(ValueError, match=r"no learned interventions .*no natural off level"):
            seed(off, 0)(num_units=3)
        with pytest.raises(ValueError, match="no learned interventions"):
            jax.jit(lambda off=off: seed(off, 0)(num_units=3))()
    # A NaN level is not a request: do() rejects it, and so does the law built directly.
    with pytest.raises(ValueError, match=r"use learned\(\)"):
        seed(do(SCM.vectorized, {"genes": {"X": knockout(float("nan"))}}), 0)(num_units=3)
    with pytest.raises(ValueError, match=r"NaN level.*no natural off level"):
        StructuralDistribution(
            lambda x: x, jnp.ones(3), from_targets(3, [0], "knockout", float("nan"))
        )


def test_dose_response_under_jit_and_vmap_is_linear_with_the_closed_form_slope():
    def mean_response(level):
        model = substitute(do(SCM.vectorized, {"genes": {"X": knockout(level)}}), PARAMETERS)
        return seed(model, 0)(num_units=4_000).mean(0)

    levels = jnp.array([-1.0, 0.0, 1.0, 2.0])
    means = np.asarray(jax.jit(jax.vmap(mean_response))(levels))
    np.testing.assert_array_equal(means[:, 1], levels)
    # One key for every dose: the same noise, so mean(Y) moves by exactly W_XY per unit dose
    # (float32 averages of 4000 values of size ~5 round at ~1e-6).
    np.testing.assert_allclose(np.diff(means[:, 2]) / np.diff(levels), W_XY, atol=1e-4)
    intercept = means[:, 2] - W_XY * np.asarray(levels)
    sd = np.sqrt(W_ZY**2 * SCALE[0] ** 2 + SCALE[2] ** 2) / np.sqrt(4_000)
    np.testing.assert_array_less(np.abs(intercept - (BIAS[2] + W_ZY * BIAS[0])), 5 * sd)  # 5 SE

    # Reparameterised draws: d Y / d b_X = W_XY for every unit, exactly.
    def mean_y(bias):
        parameters = {**PARAMETERS, "bias": bias}
        return seed(substitute(SCM.vectorized, parameters), 1)(num_units=50)[:, 2].mean()

    gradient = jax.grad(mean_y)(jnp.float32(BIAS))
    np.testing.assert_allclose(gradient, [W_ZX * W_XY + W_ZY, W_XY, 1.0], rtol=1e-5)


def test_distribution_batches_under_jit_and_vmap():
    scales = jnp.float32([SCALE, 2.0 * SCALE])
    mechanism = lambda x: BIAS + x @ jnp.float32(MATRIX)
    law = StructuralDistribution(mechanism, scales, depth=2)
    assert law.batch_shape == (2,) and law.event_shape == (3,)
    assert law.sample(jax.random.PRNGKey(0), (5,)).shape == (5, 2, 3)
    x = jnp.float32([0.5, -1.0, 2.0])
    batched = law.log_prob(x)
    one_by_one = jax.vmap(lambda s: StructuralDistribution(mechanism, s, depth=2).log_prob(x))
    jitted = jax.jit(lambda s: StructuralDistribution(mechanism, s).log_prob(x))(scales)
    np.testing.assert_allclose(one_by_one(scales), batched, rtol=1e-6)  # same float32 ops
    np.testing.assert_allclose(jitted, batched, rtol=1e-6)
    for row, factor in enumerate([1.0, 2.0]):
        mean, covariance = moments(scale=factor * SCALE)
        expected = scipy.stats.multivariate_normal(mean, covariance).logpdf(np.asarray(x))
        np.testing.assert_allclose(batched[row], expected, rtol=1e-5)  # float32, as above
    assert law.expand((4, 2)).batch_shape == (4, 2)
