"""Utilities that import nothing else of causalcell: the bottom layer (``docs/design.md``).

Linear algebra that is safe on jaxlib 0.10's CPU runtime (:mod:`.linalg`), Gaussian helpers,
the ArviZ adapter, the quantile coupling of counterfactual worlds, count checks, the library's
warning and error classes, name matching for error messages, and :func:`.keys.as_key`.
"""
