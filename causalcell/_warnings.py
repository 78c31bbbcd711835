"""Warning category of the library, so users and tests can filter causalcell's own warnings."""


class CausalcellWarning(UserWarning):
    """A warning raised by causalcell (ill-conditioning, a fallback that was taken, ...)."""
