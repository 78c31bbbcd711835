"""The causal concept model (CausCell-style): cell concepts (cell type, age, region, donor...)
as a Gumbel-max SCM over a concept DAG, one embedding per concept next to an unexplained part,
counts from a decoder; per-cell counterfactuals by abduction of each cell's own noise.

:class:`ConceptModel` fits it to AnnData; :func:`concept_model` is the NumPyro program;
:class:`ConceptSpec` and the array functions of :mod:`._scm` are the concept SCM;
:func:`counterfactual_draws` answers a counterfactual on arrays, for any draws of the
globals and of the cells' noise; :func:`readout_posterior` is the Laplace approximation of the
decoder's output layer (``decoder_posterior="laplace"``, the default).
"""

from causalcell.models.concepts._fit import DECODER_POSTERIORS
from causalcell.models.concepts._laplace import Readout, readout_features, readout_posterior
from causalcell.models.concepts._model import ConceptModel
from causalcell.models.concepts._program import (
    concept_embeddings,
    concept_model,
    decode,
    decoder_features,
)
from causalcell.models.concepts._queries import counterfactual_draws
from causalcell.models.concepts._scm import (
    ConceptSpec,
    abduct_gumbel,
    intervene,
    mechanism_logits,
    sample_levels,
)

__all__ = [
    "DECODER_POSTERIORS",
    "ConceptModel",
    "ConceptSpec",
    "Readout",
    "abduct_gumbel",
    "concept_embeddings",
    "concept_model",
    "counterfactual_draws",
    "decode",
    "decoder_features",
    "intervene",
    "mechanism_logits",
    "readout_features",
    "readout_posterior",
    "sample_levels",
]
