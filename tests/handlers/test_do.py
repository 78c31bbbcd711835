"""The do handler and the intervention primitive: exact handler semantics via traces."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import condition, seed, substitute, trace
from numpyro.infer import Predictive
from numpyro.infer.util import log_density

from causalcell.handlers import (
    UnknownSiteError,
    do,
    intervention,
    knockdown,
    knockout,
    learned,
    noise_scale,
    shift,
)


def chain():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    return numpyro.sample("y", dist.Normal(2.0 * x, 0.1))


def test_named_site_takes_the_value_and_is_recorded_as_intervened():
    sites = trace(seed(do(chain, {"x": 1.5}), 0)).get_trace()
    assert sites["x"]["type"] == "deterministic" and float(sites["x"]["value"]) == 1.5
    assert sites["x"]["infer"]["intervened"]
    # y's mean follows the intervened x: y = 3 + 0.1 eps, so within 10 sd of 3.
    assert abs(float(sites["y"]["value"]) - 3.0) < 1.0
    assert float(sites["y"]["fn"].loc) == 3.0  # 2 * 1.5, exact in float32
    # Nested do on the same named site: the innermost value stands, and no error is raised.
    nested = trace(seed(do(do(chain, {"x": 1.5}), {"x": -4.0}), 0)).get_trace()
    assert float(nested["x"]["value"]) == 1.5 and float(nested["y"]["fn"].loc) == 3.0


def test_predictive_returns_the_intervened_value_even_over_posterior_samples():
    posterior = {"x": jnp.array([5.0, -5.0, 0.3])}
    draws = Predictive(do(chain, {"x": 1.0}), posterior_samples=posterior)(jax.random.key(0))
    np.testing.assert_array_equal(draws["x"], [1.0, 1.0, 1.0])
    assert np.all(np.abs(draws["y"] - 2.0) < 1.0)  # 10 sd of y's noise around 2 * 1
    # numpyro's own do keeps the natural value under the name: ours must not.
    natural = Predictive(numpyro.handlers.do(chain, {"x": 1.0}), num_samples=3)(jax.random.key(0))
    assert not np.allclose(natural["x"], 1.0)


def test_intervened_site_adds_no_log_density_and_composes_with_condition():
    log_joint, _ = log_density(condition(do(chain, {"x": 2.0}), {"y": 3.5, "x": 9.0}), (), {}, {})
    # Only y | do(x = 2) is scored; the condition on x is overridden by the intervention.
    assert float(log_joint) == pytest.approx(float(dist.Normal(4.0, 0.1).log_prob(3.5)), rel=1e-6)
    substituted = trace(seed(substitute(do(chain, {"x": 2.0}), {"x": 7.0}), 1)).get_trace()
    assert float(substituted["x"]["value"]) == 2.0


def test_dose_response_under_jit_and_vmap_is_exactly_linear():
    run = jax.jit(jax.vmap(lambda dose: seed(do(chain, {"x": dose}), 0)()))
    doses = jnp.linspace(-1.0, 1.0, 5)
    outcome = run(doses)
    # Same seed for every dose: only the mean 2 * dose changes.
    np.testing.assert_allclose(outcome - outcome[0], 2.0 * (doses - doses[0]), atol=1e-5)


def test_unknown_names_and_wrong_shapes_raise_clear_errors():
    with pytest.raises(UnknownSiteError, match=r"\['z'\], which the model never sampled.*'x', 'y'"):
        seed(do(chain, {"z": 1.0}), 0)()
    with pytest.raises(UnknownSiteError, match="Did you mean 'y'"):
        seed(do(chain, {"yy": 1.0}), 0)()
    with pytest.raises(
        ValueError, match=r"shape \(3,\), which does not broadcast to the site's shape \(\)"
    ):
        seed(do(chain, {"x": jnp.ones(3)}), 0)()
    with pytest.raises(TypeError, match="mapping"):
        do(chain, [("x", 1.0)])


def vectorised():
    return intervention("genes", names=["GATA1", "CEBPA", "SPI1"])


def test_intervention_primitive_defaults_to_identity_and_do_fills_it_by_name():
    identity = vectorised()
    assert not np.any(identity.knockout) and np.all(identity.noise_scale == 1.0)
    specs = {
        "GATA1": knockout(-2.0),
        "CEBPA": shift(-1.0),
        "SPI1": [knockdown(0.5), noise_scale(2.0)],
    }
    filled = do(vectorised, {"genes": specs})()
    np.testing.assert_array_equal(filled.knockout, [True, False, False])
    np.testing.assert_allclose(filled.knockout_level[0], -2.0)
    np.testing.assert_allclose(filled.shift, [0.0, -1.0, 0.0])
    np.testing.assert_allclose(filled.knockdown, [0.0, 0.0, np.log(0.5)], rtol=1e-6)
    np.testing.assert_allclose(filled.noise_scale, [1.0, 1.0, 2.0])


def accepting(kind=True):
    """A vectorised site that honours learned requests (of any kind, or of ``kind`` only)."""
    return lambda: intervention("genes", names=["GATA1", "CEBPA", "SPI1"], learned=kind)


def test_learned_requests_come_back_as_a_mask_not_as_values():
    # Without a handler: the identity and an empty mask.
    identity, mask = accepting()()
    assert mask.dtype == bool and mask.tolist() == [False, False, False]
    assert not np.any(identity.targets)
    # learned() and a knockout without a level ask for the model's own intervention: they set
    # the mask and leave the explicit arrays alone; explicit specs compose as before.
    specs = {"GATA1": learned(), "CEBPA": [knockout(), shift(0.5)], "SPI1": knockout(-2.0)}
    applied, mask = do(accepting(), {"genes": specs})()
    assert isinstance(mask, np.ndarray) and mask.tolist() == [True, True, False]
    np.testing.assert_array_equal(applied.knockout, [False, False, True])
    np.testing.assert_allclose(applied.knockout_level, [0.0, 0.0, -2.0])
    np.testing.assert_allclose(applied.shift, [0.0, 0.5, 0.0])
    assert learned().kind == "learned" and learned().is_learned
    assert knockout().value is None and knockout().is_learned and not knockout(0.0).is_learned


def test_nested_do_ors_the_learned_masks():
    inner = do(accepting(), {"genes": {"GATA1": learned(), "CEBPA": shift(1.0)}})
    nested = do(inner, {"genes": {"SPI1": knockout(), "GATA1": learned()}})
    applied, mask = nested()
    assert mask.tolist() == [True, False, True]
    np.testing.assert_allclose(applied.shift, [0.0, 1.0, 0.0])
    # Under jit the mask is still concrete numpy (the specs are Python values).
    masks = []

    def traced(dose):
        applied, mask = do(inner, {"genes": {"SPI1": shift(dose)}})()
        masks.append(mask)
        return applied.shift

    np.testing.assert_allclose(jax.jit(traced)(0.25), [0.0, 1.0, 0.25])
    assert isinstance(masks[0], np.ndarray) and masks[0].tolist() == [True, False, False]


def test_learned_requests_are_rejected_where_the_site_has_none():
    for spec in (learned(), knockout()):
        with pytest.raises(ValueError, match="'genes' of this model has no learned interventions"):
            do(vectorised, {"genes": {"SPI1": spec}})()
    with pytest.raises(ValueError, match=r"knockout\(\) without a level"):
        do(vectorised, {"genes": {"SPI1": knockout()}})()
    # Under jit too: the request is a Python value, checked when the model runs.
    with pytest.raises(ValueError, match="no learned interventions"):
        jax.jit(lambda: do(vectorised, {"genes": {"SPI1": learned()}})().shift)()
    # A site that learned one kind takes learned() and that kind without a value, not another.
    shifts = accepting("shift")
    assert do(shifts, {"genes": {"SPI1": shift(None), "GATA1": learned()}})()[1].tolist() == [
        True,
        False,
        True,
    ]
    with pytest.raises(ValueError, match=r"learned knockout of 'SPI1'.*learned 'shift' inter"):
        do(shifts, {"genes": {"SPI1": knockout()}})()
    with pytest.raises(ValueError, match="learned must be"):
        intervention("genes", names=["A"], learned="everything")


def test_nan_is_no_longer_a_request_for_the_learned_value():
    for spec in (knockout(float("nan")), shift(np.nan), knockdown(jnp.array([np.nan]))):
        with pytest.raises(ValueError, match=r"NaN as the .* value of 'SPI1'.*use learned\(\)"):
            do(accepting(), {"genes": {"SPI1": spec}})()
    with pytest.raises(ValueError, match=r"use learned\(\)"):
        do(vectorised, {"genes": {"SPI1": [shift(1.0), shift(float("nan"))]}})()
    # A traced value is not inspected: a NaN dose under jit flows through as a value.
    nan_shift = jax.jit(lambda d: do(vectorised, {"genes": {"SPI1": shift(d)}})().shift)
    assert np.isnan(nan_shift(jnp.nan)[2])


def test_nested_do_composes_and_values_can_be_traced():
    nested = do(do(vectorised, {"genes": {"GATA1": shift(1.0)}}), {"genes": {"GATA1": shift(0.5)}})
    assert float(nested().shift[0]) == pytest.approx(1.5)
    doses = jnp.array([0.1, 0.2])
    shifts = jax.jit(jax.vmap(lambda d: do(vectorised, {"genes": {"CEBPA": shift(d)}})().shift))(
        doses
    )
    np.testing.assert_allclose(shifts[:, 1], doses)


def test_vectorised_errors_name_the_problem():
    with pytest.raises(
        UnknownSiteError, match=r"\['GATA2'\], which are not among its 3 entries.*'GATA1'"
    ):
        do(vectorised, {"genes": {"GATA2": knockout(0.0)}})()
    with pytest.raises(TypeError, match="shift\\(\\), knockdown\\(\\), knockout\\(\\)"):
        do(vectorised, {"genes": {"GATA1": 1.0}})()
    with pytest.raises(ValueError, match="Knockdown fractions must lie in"):
        do(vectorised, {"genes": {"GATA1": knockdown(1.5)}})()
