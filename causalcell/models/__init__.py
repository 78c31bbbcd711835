"""Models of causalcell: LCD (latent causal diffusion of screens, :mod:`.lcd`) and the
baselines every benchmark compares against (:mod:`.baselines`), and the causal concept model
(:mod:`.concepts`: :class:`ConceptModel`).
"""

from causalcell.models import baselines, concepts, lcd
from causalcell.models.concepts import ConceptModel, concept_model
from causalcell.models.lcd import LCD, lcd_model, lcd_neural_model

__all__ = [
    "LCD",
    "ConceptModel",
    "baselines",
    "concept_model",
    "concepts",
    "lcd",
    "lcd_model",
    "lcd_neural_model",
]
