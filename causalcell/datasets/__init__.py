"""Datasets: simulated perturbation screens and concept-labelled cells with ground truth, and
small shipped real data."""

from causalcell.datasets._concepts import (
    DEFAULT_CONCEPTS,
    ConceptTruth,
    concept_truth,
    simulate_concepts,
)
from causalcell.datasets._ground_truth import GroundTruth, ground_truth
from causalcell.datasets._loaders import krumsiek11, krumsiek11_graph, pbmc68k_reduced
from causalcell.datasets._sachs import SACHS_CONDITIONS, sachs, sachs_graph
from causalcell.datasets._screen import simulate_screen

__all__ = [
    "DEFAULT_CONCEPTS",
    "SACHS_CONDITIONS",
    "ConceptTruth",
    "GroundTruth",
    "concept_truth",
    "ground_truth",
    "krumsiek11",
    "krumsiek11_graph",
    "pbmc68k_reduced",
    "sachs",
    "sachs_graph",
    "simulate_concepts",
    "simulate_screen",
]
