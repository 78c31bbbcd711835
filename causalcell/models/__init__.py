"""Models of causalcell (DESIGN 3): the baselines, and LCD in ``causalcell.models.lcd``.

The concept SCM model is to come. LCD is imported from its module, not here, so that importing the
baselines does not also load the inference machinery.
"""

from causalcell.models import baselines

__all__ = ["baselines"]
