"""The text a :class:`~causalcell.inference.Posterior` prints: method, model, guide, its
sites with their shapes, draws and the loss at the end of the fit."""

from __future__ import annotations

from causalcell.inference._posterior_files import qualified_name

__all__ = ["summary"]


def summary(posterior) -> str:
    """``Posterior(method=..., model=..., guide=..., cells=...)`` and one line each for the
    global and local sites (with shapes), the stored draws and the loss history."""
    sites = posterior.describe()[0]
    guide = "None" if posterior.guide is None else type(posterior.guide).__name__
    lines = [
        f"Posterior(method={posterior.method!r}, model={qualified_name(posterior.model)}, "
        f"guide={guide}, cells={posterior.num_cells})"
    ]
    for label, names in (("global", posterior.global_sites), ("local", posterior.local_sites)):
        shapes = ", ".join(
            f"{name} ({', '.join(map(str, sites[name]['shape']))})" for name in names
        )
        lines.append(f"  {label} sites: {shapes or 'none'}")
    if posterior.samples:
        lines.append(f"  draws: {posterior.num_draws} in {posterior.num_chains} chain(s)")
    losses = posterior.losses
    if losses is not None and losses.size:
        lines.append(f"  loss: {losses.size} steps, last {float(losses[-1]):.6g}")
    return "\n".join(lines)
