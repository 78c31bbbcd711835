"""Minibatching from outside a model: a handler that subsamples a named plate."""

from __future__ import annotations

from numpyro.primitives import Messenger

__all__ = ["subsample"]


class subsample(Messenger):
    """Subsample the plate ``name`` to ``size`` elements per run.

    Models declare their cell plate without a subsample size
    (``with numpyro.plate("cells", num_cells) as index:``) and index every per-cell array with
    ``index``; ``fit`` then minibatches by wrapping model and guide in this handler. The plate
    rescales the log-likelihood by ``num_cells / size`` as usual, and the guide's indices are
    replayed in the model by the ELBO.

    Parameters
    ----------
    fn
        The model or guide.
    name
        Plate name (``"cells"`` by convention).
    size
        Subsample size; ``None`` leaves the plate whole.

    Examples
    --------
    >>> import numpyro
    >>> from numpyro.handlers import seed
    >>> def model():
    ...     with numpyro.plate("cells", 10) as index:
    ...         return index
    >>> seed(subsample(model, "cells", 4), 0)().shape
    (4,)
    """

    def __init__(self, fn=None, name: str = "cells", size: int | None = None):
        self.name = name
        self.size = size
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "plate" or msg["name"] != self.name or self.size is None:
            return
        total = msg["args"][0]
        if self.size < total:
            msg["args"] = (total, self.size)
            msg["value"] = None  # let the plate draw the indices (seeded by the stack)
