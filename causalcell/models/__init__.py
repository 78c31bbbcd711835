"""Models of causalcell (DESIGN 3): baselines now; LCD and the concept SCM model to come."""

from causalcell.models import baselines

__all__ = ["baselines"]
