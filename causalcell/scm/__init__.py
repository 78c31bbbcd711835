"""Structural causal model (SCM) priors over a DAG, as NumPyro sub-programs (DESIGN 2.2).

Each node ``j`` of a ``networkx.DiGraph`` follows a structural equation with Gaussian noise,

    ``x_j = loc_j(x_pa(j)) + scale_j * eps_j``,  ``eps_j ~ N(0, 1)`` independent,

with ``loc_j = bias_j + sum_{i in pa(j)} weights_ij x_i`` in :class:`LinearSCM` (``weights``
in adjacency orientation: parent ``i``, child ``j``, as in :mod:`causalcell.graph`), a small
per-node network in :class:`NonlinearSCM`, or a user's own mechanism. Parameters are NumPyro
sample sites with priors, sampled once outside the ``"units"`` plate, so inference gives them
posteriors. Each SCM runs in two forms:

- :meth:`~StructuralCausalModel.named`: one sample site per node, named ``str(node)``, for
  small graphs (concepts, proteins); intervene by name with :class:`causalcell.handlers.do` or
  ``numpyro.handlers.do``.
- :meth:`~StructuralCausalModel.vectorized`: one site (``"genes"`` by default) of event shape
  ``[d]`` whose law is a :class:`StructuralDistribution`; intervene with array interventions
  (``do(model, {"genes": {"B": knockout(0.0)}})``, DESIGN 2.5).

Both forms give the same log density for the same values and parameters. Use
``numpyro.handlers.scope`` to hold two SCMs in one model (their parameter sites share names).

References
----------
Pearl, J. (2009). *Causality*, 2nd ed. Cambridge University Press.

Peters, J., Janzing, D. and Schölkopf, B. (2017). *Elements of Causal Inference*. MIT Press.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping

import jax.numpy as jnp
import networkx as nx
import numpy as np
import numpyro
import numpyro.distributions as dist

from causalcell.handlers import intervention
from causalcell.scm._distribution import StructuralDistribution
from causalcell.scm._mechanisms import (
    Structure,
    check_named_data,
    check_vector_data,
    expand_prior,
    freeze,
    linear_mechanism,
    network_mechanism,
    resolve_mechanisms,
)

__all__ = ["LinearSCM", "NonlinearSCM", "StructuralCausalModel", "StructuralDistribution"]

Mechanisms = Mapping[Hashable, Callable] | Callable | None


class StructuralCausalModel:
    """Common machinery of the SCM priors; use :class:`LinearSCM` or :class:`NonlinearSCM`.

    Attributes
    ----------
    nodes
        The fixed node order (the graph's insertion order unless ``nodes`` was given): the
        columns of the vectorised site and the entries of the ``"scale"`` site.
    names
        ``str(node)`` for each node: the site names of the named form and the entry names of
        the vectorised site's interventions.
    builtin_nodes
        Nodes whose mean is the built-in mechanism (all nodes unless ``mechanisms`` replaces
        some): the entries of the ``"bias"`` site.
    edges
        ``(parent, child)`` pairs into built-in nodes, in row-major adjacency order (the order of
        ``numpy.nonzero(to_adjacency(graph, nodes))``): the entries of the edge parameter site.
    depth
        Number of edges on the longest directed path.
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        *,
        nodes: Iterable[Hashable] | None = None,
        bias_prior: dist.Distribution | None = None,
        scale_prior: dist.Distribution | None = None,
        mechanisms: Mechanisms = None,
    ):
        structure = Structure.from_graph(graph, nodes)
        self._structure = structure
        self.nodes = structure.nodes
        self.names = structure.names
        self.depth = structure.depth
        self._per_node, self._whole = resolve_mechanisms(mechanisms, structure)
        size = len(self.nodes)
        builtin = () if self._whole else tuple(j for j in range(size) if j not in self._per_node)
        self._builtin = builtin
        self._edges = structure.edges_into(builtin)
        self.builtin_nodes = tuple(self.nodes[j] for j in builtin)
        self.edges = tuple((self.nodes[parent], self.nodes[child]) for parent, child in self._edges)
        self._bias_prior = expand_prior(bias_prior, dist.Normal(0.0, 1.0), (len(builtin),), "bias")
        self._scale_prior = expand_prior(scale_prior, dist.HalfNormal(1.0), (size,), "scale")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nodes={list(self.names)}, edges={len(self.edges)})"

    def _builtin_mechanism(self) -> Callable:
        """Sample the built-in mechanism's parameters; return ``x [..., d] -> loc [..., d]``."""
        raise NotImplementedError

    def _sample_bias(self):
        bias = numpyro.sample("bias", self._bias_prior)
        full = jnp.zeros(len(self.nodes), jnp.result_type(bias))
        return full.at[np.asarray(self._builtin, int)].set(bias)

    def _parameters(self):
        """Sample every parameter site; return (vector mechanism, node mechanism, scale)."""
        builtin = self._builtin_mechanism() if self._builtin else None
        scale = numpyro.sample("scale", self._scale_prior)
        names, parents = self.names, self._structure.parents
        per_node = {
            j: freeze(function, {names[p]: jnp.zeros(()) for p in parents[j]})
            for j, function in self._per_node.items()
        }
        # all nodes' means at once: the user's whole mechanism, else the built-in one
        joint = freeze(self._whole, jnp.zeros(len(names))) if self._whole else builtin

        def vector(x):
            loc = jnp.zeros_like(x) if joint is None else joint(x)
            for j, function in per_node.items():  # empty when a whole mechanism is given
                value = function({names[p]: x[..., p] for p in parents[j]})
                loc = loc.at[..., j].set(jnp.broadcast_to(value, x.shape[:-1]))
            return loc

        def node(j, columns):
            if j in per_node:
                return per_node[j]({names[p]: columns[p] for p in parents[j]})
            return joint(jnp.stack(columns, axis=-1))[..., j]

        return vector, node, scale

    def named(self, data: Mapping | None = None, *, num_units: int | None = None) -> dict:
        """NumPyro program with one sample site per node, named ``str(node)``.

        Parameters
        ----------
        data
            Observed values, ``{node: array [num_units]}``, for any subset of the nodes; the
            others are sampled. Keys may be the nodes or their names.
        num_units
            Size of the ``"units"`` plate; inferred from ``data`` when omitted.

        Returns
        -------
        dict
            ``{name: array [num_units]}`` in node order (intervened values where ``do`` set them).

        Raises
        ------
        KeyError
            (:class:`causalcell.handlers.UnknownSiteError`) if ``data`` names an unknown node.
        ValueError
            If an observed array is not of shape ``[num_units]``, or the number of units is
            unknown.
        """
        observed, num_units = check_named_data(self._structure, data, num_units)
        _, node, scale = self._parameters()
        columns = [jnp.zeros(num_units)] * len(self.nodes)
        with numpyro.plate("units", num_units):
            for j in self._structure.order:
                name = self.names[j]
                law = dist.Normal(node(j, columns), scale[..., j])
                value = numpyro.sample(name, law, obs=observed.get(name))
                columns[j] = jnp.broadcast_to(value, jnp.shape(columns[j]))
        return {name: columns[j] for j, name in enumerate(self.names)}

    def vectorized(
        self, data=None, *, num_units: int | None = None, site: str = "genes"
    ) -> jnp.ndarray:
        """NumPyro program with one site ``site`` of event shape ``[d]`` (columns = ``nodes``).

        The site's law is a :class:`StructuralDistribution` under the intervention that
        :func:`causalcell.handlers.intervention` receives for ``site`` (entry names
        ``self.names``), e.g. ``do(scm.vectorized, {"genes": {"X": knockout(1.0)}})``.

        Parameters
        ----------
        data
            Observed ``[num_units, d]`` array, or ``None`` to simulate.
        num_units
            Size of the ``"units"`` plate; inferred from ``data`` when omitted.
        site
            Name of the sample site and of the intervention key.

        Returns
        -------
        jax.Array
            ``[num_units, d]`` values of the site.

        Raises
        ------
        ValueError
            If ``data`` is not ``[num_units, d]`` or the number of units is unknown; ``do``
            raises for ``knockout()`` without a level or ``learned()`` (an SCM has no learned
            intervention).
        """
        data, num_units = check_vector_data(self._structure, data, num_units)
        applied = intervention(site, names=self.names)
        vector, _, scale = self._parameters()
        law = StructuralDistribution(vector, scale, applied, depth=self.depth)
        with numpyro.plate("units", num_units):
            return numpyro.sample(site, law, obs=data)


class LinearSCM(StructuralCausalModel):
    """Linear-Gaussian SCM prior: ``x_j = bias_j + sum_{pa(j)} weights_ij x_i + scale_j eps_j``.

    Parameter sites (outside the ``"units"`` plate): ``"weights"`` ``[len(edges)]`` (one per
    edge of :attr:`edges`; absent for a graph without edges), ``"bias"``
    ``[len(builtin_nodes)]`` and ``"scale"`` ``[d]``. Vectorised, the model is
    ``x = (I - W^T)^{-1} (bias + scale * eps)`` with ``W = weight_matrix(weights)``, computed
    by ``depth + 1`` sweeps of the structural equations (no inverse).

    Parameters
    ----------
    graph
        The causal DAG (``networkx.DiGraph``).
    nodes
        Node order; see :func:`causalcell.graph.node_order`.
    weight_prior, bias_prior, scale_prior
        Univariate numpyro distributions (or batch shape broadcastable to the site), expanded
        to the site's shape. Defaults: ``Normal(0, 1)``, ``Normal(0, 1)``, ``HalfNormal(1)``.
    mechanisms
        Users' own mechanisms. Either ``{node: fn(parents) -> loc}``, where ``parents`` maps
        the names of the node's parents to their values (arrays over units) and ``loc`` is the
        node's mean (those nodes get no bias or edge weights), or one ``fn(x [..., d]) -> loc
        [..., d]`` for all nodes, where ``loc_j`` may depend only on the parents of ``j`` (not
        checked; otherwise the density is wrong). Noise stays Gaussian with the learned
        ``"scale"``. A mechanism may call ``numpyro.sample`` for its own parameters: it is
        called once outside the units plate on zero inputs to sample them (so they are global
        and their shapes must not depend on the input), then evaluated with those values.

    Raises
    ------
    CyclicGraphError
        If the graph has a cycle (the message names one).
    KeyError
        (:class:`causalcell.handlers.UnknownSiteError`) if ``mechanisms`` names a node the
        graph lacks; the message lists the nodes.

    Examples
    --------
    >>> import networkx as nx
    >>> from numpyro.handlers import seed, trace
    >>> from causalcell.handlers import do, knockout
    >>> scm = LinearSCM(nx.DiGraph([("Z", "X"), ("Z", "Y"), ("X", "Y")]))
    >>> scm.edges
    (('Z', 'X'), ('Z', 'Y'), ('X', 'Y'))
    >>> sites = trace(seed(scm.named, 0)).get_trace(num_units=4)
    >>> [(name, site["value"].shape) for name, site in sites.items() if site["type"] == "sample"]
    [('weights', (3,)), ('bias', (3,)), ('scale', (3,)), ('Z', (4,)), ('X', (4,)), ('Y', (4,))]
    >>> model = do(scm.vectorized, {"genes": {"X": knockout(2.0)}})
    >>> seed(model, 0)(num_units=4)[:, 1].tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        *,
        nodes: Iterable[Hashable] | None = None,
        weight_prior: dist.Distribution | None = None,
        bias_prior: dist.Distribution | None = None,
        scale_prior: dist.Distribution | None = None,
        mechanisms: Mechanisms = None,
    ):
        super().__init__(
            graph, nodes=nodes, bias_prior=bias_prior, scale_prior=scale_prior,
            mechanisms=mechanisms,
        )  # fmt: skip
        shape = (len(self._edges),)
        self._weight_prior = expand_prior(weight_prior, dist.Normal(0.0, 1.0), shape, "weights")

    def _builtin_mechanism(self) -> Callable:
        weights = numpyro.sample("weights", self._weight_prior) if self._edges else None
        return linear_mechanism(self._edges, weights, self._sample_bias())

    def weight_matrix(self, weights) -> jnp.ndarray:
        """Scatter ``weights [..., len(edges)]`` into the adjacency-oriented ``[..., d, d]``.

        ``matrix[..., i, j]`` is the weight of the edge ``i -> j`` (0 where there is none).

        Examples
        --------
        >>> scm = LinearSCM(nx.DiGraph([("a", "b")]))
        >>> scm.weight_matrix(jnp.array([0.5])).tolist()
        [[0.0, 0.5], [0.0, 0.0]]
        """
        weights = jnp.asarray(weights)
        size = len(self.nodes)
        matrix = jnp.zeros((*weights.shape[:-1], size, size), weights.dtype)
        if not self._edges:
            return matrix
        parents, children = np.asarray(self._edges, int).T
        return matrix.at[..., parents, children].set(weights)


class NonlinearSCM(StructuralCausalModel):
    """SCM prior whose nodes' means are small networks over their parents.

    ``loc_j = bias_j + sum_h v_jh [tanh(sum_{i in pa(j)} U_ijh x_i + c_jh) - tanh(c_jh)]``: one
    hidden tanh layer of width ``hidden`` per node. Subtracting ``tanh(c_jh)`` makes the network
    vanish when the parents are 0, so ``bias_j`` is the node's mean at zero parents (as in the
    linear SCM) and nodes without parents have no network.

    Parameter sites (outside the ``"units"`` plate): ``"mlp_input_weights"``
    ``[len(edges), hidden]`` (row ``e`` holds ``U`` of edge ``edges[e]``),
    ``"mlp_hidden_bias"`` and ``"mlp_output_weights"`` ``[len(network_nodes), hidden]``
    (``c`` and ``v``), ``"bias"`` ``[len(builtin_nodes)]``, ``"scale"`` ``[d]``. The network
    sites are absent when no built-in node has parents.

    Parameters
    ----------
    graph, nodes, bias_prior, scale_prior, mechanisms
        As in :class:`LinearSCM`.
    hidden
        Width ``H`` of each node's hidden layer.
    weight_prior, hidden_bias_prior, output_prior
        Priors of ``U``, ``c`` and ``v``. Defaults ``Normal(0, 1)``, ``Normal(0, 1)`` and
        ``Normal(0, 1 / sqrt(hidden))`` (the last keeps the network's output of order 1 for any
        width).

    Attributes
    ----------
    network_nodes
        Built-in nodes with parents: the rows of ``"mlp_hidden_bias"`` and
        ``"mlp_output_weights"``.

    Examples
    --------
    >>> import networkx as nx
    >>> from numpyro.handlers import seed, trace
    >>> scm = NonlinearSCM(nx.DiGraph([("a", "b"), ("a", "c"), ("b", "c")]), hidden=4)
    >>> sites = trace(seed(scm.vectorized, 0)).get_trace(num_units=5)
    >>> {name: site["value"].shape for name, site in sites.items() if name.startswith("mlp")}
    {'mlp_input_weights': (3, 4), 'mlp_hidden_bias': (2, 4), 'mlp_output_weights': (2, 4)}
    >>> sites["genes"]["value"].shape
    (5, 3)
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        *,
        nodes: Iterable[Hashable] | None = None,
        hidden: int = 8,
        weight_prior: dist.Distribution | None = None,
        hidden_bias_prior: dist.Distribution | None = None,
        output_prior: dist.Distribution | None = None,
        bias_prior: dist.Distribution | None = None,
        scale_prior: dist.Distribution | None = None,
        mechanisms: Mechanisms = None,
    ):
        if int(hidden) != hidden or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}.")
        super().__init__(
            graph, nodes=nodes, bias_prior=bias_prior, scale_prior=scale_prior,
            mechanisms=mechanisms,
        )  # fmt: skip
        self.hidden = int(hidden)
        parents = self._structure.parents
        self._network = tuple(j for j in self._builtin if parents[j])
        self.network_nodes = tuple(self.nodes[j] for j in self._network)
        rows = (len(self._network), self.hidden)
        self._network_priors = {
            "mlp_input_weights": expand_prior(
                weight_prior, dist.Normal(0.0, 1.0), (len(self._edges), self.hidden),
                "mlp_input_weights",
            ),
            "mlp_hidden_bias": expand_prior(
                hidden_bias_prior, dist.Normal(0.0, 1.0), rows, "mlp_hidden_bias"
            ),
            "mlp_output_weights": expand_prior(
                output_prior, dist.Normal(0.0, 1.0 / np.sqrt(self.hidden)), rows,
                "mlp_output_weights",
            ),
        }  # fmt: skip

    def _builtin_mechanism(self) -> Callable:
        if not self._network:  # no built-in node has parents: the means are the biases
            return linear_mechanism((), None, self._sample_bias())
        parameters = {
            name: numpyro.sample(name, prior) for name, prior in self._network_priors.items()
        }
        bias = self._sample_bias()
        return network_mechanism(self._structure, self._network, self._edges, parameters, bias)
