"""The library's own warning category and the ``KeyError`` its messages use."""


class CausalcellWarning(UserWarning):
    """A warning raised by causalcell (ill-conditioning, a fallback that was taken, ...)."""


class DataKeyError(KeyError):
    """A ``KeyError`` whose message prints without the quotes ``KeyError`` adds."""

    def __str__(self) -> str:
        return str(self.args[0])
