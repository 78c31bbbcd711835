"""Models of causalcell: LCD (latent causal diffusion of screens, :mod:`.lcd`) and the
baselines every benchmark compares against (:mod:`.baselines`). The concept model is to come.
"""

from causalcell.models import baselines, lcd
from causalcell.models.lcd import LCD, lcd_model, lcd_neural_model

__all__ = ["LCD", "baselines", "lcd", "lcd_model", "lcd_neural_model"]
