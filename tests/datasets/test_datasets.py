"""The ground-truth simulator and the shipped datasets."""

import anndata
import jax
import networkx as nx
import numpy as np
import pytest

from causalcell.datasets import (
    ground_truth,
    krumsiek11,
    krumsiek11_graph,
    pbmc68k_reduced,
    simulate_screen,
)
from causalcell.diffusion import intervene_linear, spectral_abscissa, stationary_moments
from causalcell.graph import to_adjacency
from causalcell.interventions import compose

SMALL = dict(num_genes=8, num_cells=1200, perturbed_genes=3, double_perturbations=2)


@pytest.fixture(scope="module")
def screen():
    return simulate_screen(**SMALL, key=0)


def test_same_key_same_screen_and_different_key_different_screen(screen):
    again = simulate_screen(**SMALL, key=0)
    assert (screen.X != again.X).nnz == 0
    np.testing.assert_array_equal(screen.layers["latent"], again.layers["latent"])
    other = simulate_screen(**SMALL, key=1)
    assert (screen.X != other.X).nnz > 0
    # A numpy integer is the same seed as the Python int.
    assert (simulate_screen(**SMALL, key=np.int64(1)).X != other.X).nnz == 0


def test_layout_and_counts(screen):
    counts = screen.X.toarray()
    assert screen.shape == (1200, 8)
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))
    labels = screen.obs["perturbation"]
    assert labels.cat.categories[0] == "control"
    assert (labels == "control").sum() == 240  # control_fraction 0.2 of 1200 cells
    perturbed = set(screen.uns["simulation"]["targets"])
    assert set(screen.var_names[screen.var["perturbed"]]) == perturbed
    doubles = [label for label in labels.cat.categories if "+" in label]
    assert len(doubles) == 2


def test_control_stationary_mean_is_the_baseline_and_matches_the_cells(screen):
    truth = screen.uns["simulation"]
    baseline = truth["baseline"]
    np.testing.assert_allclose(truth["stationary_means"][0], baseline, rtol=1e-4, atol=1e-4)
    drift = ground_truth(screen).drift
    assert spectral_abscissa(drift.matrix()) < 0
    latent = screen.layers["latent"]
    labels = screen.obs["perturbation"].to_numpy()
    for index, condition in enumerate(truth["conditions"]):
        cells = latent[labels == condition]
        _, covariance = stationary_moments(drift, truth["sigma"], _row(screen, index))
        # Exact Gaussian draws: the sample mean's standard error is sqrt(diag(Sigma) / n);
        # 5 of them keeps the 8 genes x 6 conditions family well inside the bound.
        error = 5 * np.sqrt(np.diag(np.asarray(covariance)) / cells.shape[0])
        np.testing.assert_array_less(
            np.abs(cells.mean(0) - truth["stationary_means"][index]), error
        )


def _row(adata, index):
    return jax.tree_util.tree_map(lambda field: field[index], ground_truth(adata).interventions)


def test_knockouts_pin_targets_and_doubles_compose_singles(screen):
    truth = ground_truth(screen)
    conditions = list(truth.conditions)
    genes = list(screen.var_names)
    levels = dict(
        zip(
            screen.uns["simulation"]["targets"],
            screen.uns["simulation"]["intervention_values"],
            strict=True,
        )
    )
    for label in conditions[1:]:
        members = label.split("+")
        mean = truth.stationary_means[conditions.index(label)]
        for gene in members:
            # The knocked-out gene's stationary mean is its pinned level, exactly.
            assert mean[genes.index(gene)] == pytest.approx(levels[gene], abs=1e-5)
            assert levels[gene] == pytest.approx(
                screen.uns["simulation"]["baseline"][genes.index(gene)] - 3.0, abs=1e-5
            )
        if len(members) == 2:
            first, second = (_row(screen, conditions.index(gene)) for gene in members)
            combined = _row(screen, conditions.index(label))
            for got, expected in zip(combined, compose(first, second), strict=True):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_ground_truth_graph_matches_drift_and_survives_h5ad(screen, tmp_path):
    truth = ground_truth(screen)
    adjacency = screen.uns["simulation"]["graph"]
    np.testing.assert_array_equal(to_adjacency(truth.graph, list(screen.var_names)), adjacency)
    matrix = np.asarray(truth.drift.matrix())
    for parent, child, weight in truth.graph.edges(data="weight"):
        assert weight == pytest.approx(
            matrix[screen.var_names.get_loc(child), screen.var_names.get_loc(parent)]
        )
    assert nx.is_directed_acyclic_graph(truth.graph)
    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    reread = ground_truth(anndata.read_h5ad(path))
    np.testing.assert_array_equal(np.asarray(reread.drift.matrix()), matrix)
    assert reread.conditions == truth.conditions


@pytest.mark.parametrize("intervention", ["shift", "knockdown"])
def test_soft_interventions_move_the_stationary_mean_by_the_closed_form(intervention):
    adata = simulate_screen(
        num_genes=6,
        num_cells=300,
        perturbed_genes=2,
        double_perturbations=1,
        intervention=intervention,
        key=3,
    )
    truth = adata.uns["simulation"]
    genes = list(adata.var_names)
    matrix = np.asarray(truth["drift_matrix"], np.float64)
    decay = -np.diag(matrix)
    conditions = list(truth["conditions"])
    for target, value in zip(truth["targets"], truth["intervention_values"], strict=True):
        column = genes.index(target)
        if intervention == "knockdown":
            assert 0.125 <= value <= 0.375  # fraction drawn in [strength / 2, 3 strength / 2]
            bias_change = decay[column] * np.log(value)  # production times the fraction
        else:
            assert value < 0  # CRISPRi-like repression: the bias goes down
            bias_change = value
        # A bias change b_t moves the stationary mean by -A^{-1} e_t b_t (linear drift),
        # computed here in float64 from the stored drift alone.
        expected = -np.linalg.solve(matrix, np.eye(len(genes))[:, column]) * bias_change
        moved = truth["stationary_means"][conditions.index(target)] - truth["stationary_means"][0]
        # float32 storage of the means (~1e-6 relative on values of order 1-10).
        np.testing.assert_allclose(moved, expected, atol=1e-4)


def test_cyclic_graphs_stay_stable_under_knockouts():
    adata = simulate_screen(
        num_genes=12,
        num_cells=200,
        perturbed_genes=4,
        double_perturbations=2,
        acyclic=False,
        expected_parents=3.0,
        key=4,
    )
    truth = ground_truth(adata)
    assert not nx.is_directed_acyclic_graph(truth.graph)
    assert spectral_abscissa(truth.drift.matrix()) < 0
    assert np.isfinite(truth.stationary_means).all()
    # The construction: each row's off-diagonal |weights| sum to at most 0.9 of its decay
    # (strict diagonal dominance, so Gershgorin keeps every eigenvalue left of -0.1 * decay).
    weights, decay = np.asarray(truth.drift.weights), np.asarray(truth.drift.decay)
    assert np.all(np.abs(weights).sum(axis=1) <= 0.9 * decay * (1 + 1e-6))  # float32 rounding
    # Every condition's knocked-out drift is stable too, and pins its targets at their levels.
    matrices, _, _ = intervene_linear(truth.drift, truth.sigma, truth.interventions)
    assert np.all(spectral_abscissa(matrices) < 0)
    knockout = np.asarray(truth.interventions.knockout)
    levels = np.asarray(truth.interventions.knockout_level)
    assert knockout[1:].any(axis=1).all() and not knockout[0].any()
    # float32 solve of the stationary means (entries of order 1-10): a few ulps.
    np.testing.assert_allclose(truth.stationary_means[knockout], levels[knockout], atol=1e-5)


def test_neural_drift_screen_and_zero_inflated_noise():
    adata = simulate_screen(
        num_genes=6,
        num_cells=300,
        perturbed_genes=2,
        double_perturbations=1,
        drift="neural",
        noise="zero_inflated_negative_binomial",
        key=5,
    )
    truth = adata.uns["simulation"]
    assert truth["drift_kind"] == "neural" and not truth["stationary_means_exact"]
    assert np.isfinite(adata.layers["latent"]).all()
    # Knocked-out genes sit at their pinned level: |empirical mean - level| within 5 standard
    # errors of ~60 draws with variance sigma^2 / (2 decay) <= 0.25 / 1.
    genes = list(adata.var_names)
    for target, level in zip(truth["targets"], truth["intervention_values"], strict=True):
        row = list(truth["conditions"]).index(target)
        assert truth["stationary_means"][row, genes.index(target)] == pytest.approx(
            level, abs=5 * np.sqrt(0.25 / 60)
        )
    zeros = (adata.X.toarray() == 0).mean()
    assert zeros > 0.05  # zero inflation of at least 5% on top of the negative binomial


def test_bad_designs_raise_clear_errors():
    with pytest.raises(ValueError, match="Unknown gene names"):
        simulate_screen(num_genes=5, num_cells=50, perturbed_genes=["NOPE"], double_perturbations=0)
    with pytest.raises(ValueError, match="only make 1 pairs"):
        simulate_screen(num_genes=5, num_cells=50, perturbed_genes=2, double_perturbations=3)
    with pytest.raises(ValueError, match="drift must be"):
        simulate_screen(drift="quadratic")
    with pytest.raises(ValueError, match="cannot cover"):
        simulate_screen(num_genes=5, num_cells=3, perturbed_genes=4, double_perturbations=0)


def test_krumsiek11_ships_data_and_its_curated_graph():
    adata = krumsiek11()
    assert adata.shape == (640, 11)
    assert adata.obs["cell_type"].value_counts()["progenitor"] == 320
    graph = krumsiek11_graph()
    # Table 1 of Krumsiek et al. (2011): Gata1 = (Gata1 or Gata2 or Fli1) and not Pu.1.
    assert graph.edges["Pu.1", "Gata1"]["sign"] == -1
    assert graph.edges["Gata2", "Gata1"]["sign"] == 1 and graph.edges["Fli1", "Gata1"]["sign"] == 1
    assert graph.edges["Gata1", "Fog1"]["sign"] == 1
    genes = list(adata.var_names)
    assert adata.uns["graph"][genes.index("Pu.1"), genes.index("Gata1")] == -1
    # uns["graph"] is the same graph as a signed adjacency in gene order (row = regulator).
    assert set(graph.nodes) == set(genes) and not list(nx.selfloop_edges(graph))
    np.testing.assert_array_equal(adata.uns["graph"], to_adjacency(graph, genes, weight="sign"))
    assert np.count_nonzero(adata.uns["graph"]) == graph.number_of_edges()


def test_pbmc68k_reduced_reads_from_the_installed_package():
    adata = pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert "bulk_labels" in adata.obs
