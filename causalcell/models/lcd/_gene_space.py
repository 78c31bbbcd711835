"""LCD's reduced gene space: modelled genes plus latent programs, and a linear decoder.

DESIGN 3.1 lets LCD work in a reduced gene space; this module states which. The latent state
``z`` of a cell has one coordinate per *modelled gene* (by default the genes the screen
perturbs, optionally with chosen or highly variable genes) followed by ``k`` latent *programs*.
The stable linear drift of :mod:`._program` acts on ``z`` (dimension ``m = modelled + k``)
and interventions act on the modelled genes' coordinates exactly as in the full model, so
every perturbation stays gene-specific. Each gene's log-rate is linear in ``z``:

- a modelled gene reads its own coordinate (identity rows, as in the full model);
- every other (*decoded*) gene ``g`` of a cell in condition ``p`` has

  ``log_rate_g = c_g + R_g . (mu_p - baseline)_M + F_g . (z - mu_p)``

  with ``mu_p`` the stationary mean of ``z`` in the condition, a learned offset ``c`` (the
  control mean log-rate, since ``baseline`` is the control stationary mean), *responses*
  ``R`` ``[decoded, modelled]`` that carry the condition's mean shift of the modelled genes
  to the gene, and *loadings* ``F`` ``[decoded, m]`` that carry the cell's fluctuation around
  the condition's mean (modelled genes and programs).

Within a condition the log-rates are an affine map of ``z`` (slope ``F``), so cells remain
"Gaussian latent -> linear map -> negative binomial counts": the stationary law of ``z`` is
still the exact Lyapunov law, and the guide's exact Gaussian update (:mod:`._guide`) goes
through the map with a per-condition offset.

Why this choice. Perturbations act on genes, so the perturbed genes must be coordinates of
the state. With a linear drift the means of every other gene are then exactly affine in the
targets' means: for the non-targeted block ``N`` the fixed point is ``x_N = -A_NN^{-1} (A_NT
x_T + b_N)`` under every intervention on the targets ``T``, because interventions only change
the targets' rows. So ``R`` carries every mean response, composition of perturbations
included (through the drift among modelled genes and programs). Fluctuations differ: a gene
that shares a regulator with a target covaries with it in every condition yet does not move
when the target is knocked out. With one loading matrix for both (an earlier version of this
module), such covariation leaked into the interventional response, and the fit shrank the
knockout depths (to -1.5 or less instead of -3 at 1,000 genes) to limit the spurious
responses of hundreds of decoded genes. Separate responses (identified by the shifts between
conditions) and loadings (by the covariance within conditions) keep the two apart; the ``k``
programs add low-rank covariation that no modelled gene explains. What is lost: decoded genes
have no latent noise of their own (their own variation is absorbed by the negative binomial's
overdispersion), and their covariance within a condition is of rank ``m``.

Cost per SVI step: one Lyapunov solve and a few factorisations of ``m x m`` matrices per
condition, ``O(conditions (m^3 + G m^2))``, plus ``O(batch G m)`` per minibatch, instead of
``O(conditions G^3)`` for the full model (``G`` genes). A screen with at most
:data:`FULL_GENE_LIMIT` genes keeps every gene as a coordinate and no programs by default:
that is exactly the full model (same sites, same seeded fit).

References
----------
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS.
Tipping, M. E. & Bishop, C. M. (1999). Probabilistic principal component analysis. JRSS B
61(3) (a linear-Gaussian decoder of a low-dimensional latent; its initial values and
priors are in :mod:`._decoder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from causalcell._core.linalg import solve
from causalcell.models.lcd._decoder import decode, decoder_from_sites, initial_decoder
from causalcell.preprocessing import variable_genes

__all__ = [
    "DEFAULT_PROGRAMS",
    "FULL_GENE_LIMIT",
    "GeneSpace",
    "choose_gene_space",
    "reduce_programs",
]

#: Screens with at most this many genes model every gene (the full model) by default.
FULL_GENE_LIMIT = 64
#: Programs of a reduced gene space when ``programs`` is not given.
DEFAULT_PROGRAMS = 8


class GeneSpace(NamedTuple):
    """Which genes are coordinates of LCD's latent state and how many programs follow them.

    Attributes
    ----------
    genes
        Every registered gene, in AnnData order.
    modelled
        ``[n]`` positions (in ``genes``) of the modelled genes, increasing.
    programs
        Number ``k`` of latent programs after the modelled genes.

    Internally, columns are ordered modelled genes first, then decoded genes (both in AnnData
    order); :attr:`order` maps internal to AnnData positions and :attr:`inverse` back.
    """

    genes: tuple[str, ...]
    modelled: np.ndarray
    programs: int

    @property
    def decoded(self) -> np.ndarray:
        """Positions of the decoded (not modelled) genes, increasing."""
        return np.setdiff1d(np.arange(len(self.genes)), self.modelled)

    @property
    def is_full(self) -> bool:
        """Every gene is modelled and there are no programs: the full model of DESIGN 3.1."""
        return len(self.modelled) == len(self.genes) and self.programs == 0

    @property
    def latent_size(self) -> int:
        return len(self.modelled) + self.programs

    @property
    def order(self) -> np.ndarray:
        return np.concatenate([self.modelled, self.decoded])

    @property
    def inverse(self) -> np.ndarray:
        return np.argsort(self.order)

    @property
    def modelled_genes(self) -> tuple[str, ...]:
        return tuple(self.genes[position] for position in self.modelled)

    @property
    def coordinates(self) -> tuple[str, ...]:
        """Names of the latent coordinates: modelled genes, then ``program1`` .. ``programk``."""
        return self.modelled_genes + tuple(f"program{index + 1}" for index in range(self.programs))

    def reorder(self, arrays):
        """:class:`causalcell.data.ScreenArrays` with gene columns in internal order."""
        if self.is_full:
            return arrays
        order = self.order
        return arrays._replace(
            counts=arrays.counts[:, order],
            condition_targets=arrays.condition_targets[:, order],
            genes=tuple(self.genes[position] for position in order),
        )

    def latent_targets(self, targets):
        """Multi-hot targets over internal genes ``[..., G]`` -> latent coordinates ``[..., m]``."""
        targets = np.asarray(targets)
        if self.is_full:
            return targets
        modelled = len(self.modelled)
        if targets[..., modelled:].any():
            raise ValueError("A condition targets a decoded gene; targets must be modelled.")
        padding = np.zeros((*targets.shape[:-1], self.programs), targets.dtype)
        return np.concatenate([targets[..., :modelled], padding], axis=-1)

    def latent_mask(self, prior_mask):
        """The prior mask ``[G, G]`` (AnnData order) restricted to modelled genes, with every
        edge to and from programs allowed; ``None`` stays ``None``."""
        if prior_mask is None:
            return None
        mask = np.asarray(prior_mask, np.float32)
        if self.is_full:
            return mask
        latent = np.ones((self.latent_size, self.latent_size), np.float32)
        modelled = len(self.modelled)
        latent[:modelled, :modelled] = mask[np.ix_(self.modelled, self.modelled)]
        return latent

    def gene_mask(self, latent_mask):
        """A prior mask ``[G, G]`` that :meth:`latent_mask` maps to ``latent_mask`` (the
        modelled genes' block; ones elsewhere, which :meth:`latent_mask` does not read)."""
        if latent_mask is None:
            return None
        latent = np.asarray(latent_mask, np.float32)
        if self.is_full:
            return latent
        mask = np.ones((len(self.genes), len(self.genes)), np.float32)
        modelled = len(self.modelled)
        mask[np.ix_(self.modelled, self.modelled)] = latent[:modelled, :modelled]
        return mask

    def latent_values(self, values: dict, arrays) -> dict:
        """Initial values of the globals in latent coordinates, plus the decoder's.

        ``values`` holds per-gene initial values (internal order) of ``baseline`` and the
        intervention parameter; modelled genes keep theirs and programs start at zero. The
        decoder starts at the control levels (offsets), at a ridge regression of the decoded
        genes' condition mean changes on the modelled genes' (responses, and the loadings on
        modelled genes), and at principal axis factors of the decoded genes' within-condition
        variation (program loadings). ``arrays`` are the screen arrays in internal order.
        """
        if self.is_full:
            return values
        modelled = len(self.modelled)
        latent = {
            name: np.concatenate([value[:modelled], np.zeros(self.programs, np.float32)])
            for name, value in values.items()
        }
        responses, loadings, scales = initial_decoder(arrays, modelled, self.programs)
        latent["decoder_offset"] = values["baseline"][modelled:]
        latent["decoder_responses"] = responses
        latent["decoder_loadings"] = loadings
        latent["response_scales"] = scales  # the responses' prior (data, not a site)
        return latent

    def in_gene_order(self, values):
        """Per-gene ``values`` ``[..., G]`` from internal to AnnData order."""
        return values if self.is_full else values[..., self.inverse]

    def decode_draws(self, latent, means, draws):
        """Log-rates ``[S, ..., G]`` (AnnData order) of latents ``[S, ..., m]`` whose
        conditions have stationary means ``means`` (same shape), latent ``s`` decoded by
        posterior draw ``s`` of the globals ``draws``."""
        if self.is_full:
            return latent
        modelled = len(self.modelled)

        def one(latent, means, baseline, decoder):
            return decode(latent, means, baseline, decoder, modelled)

        rates = jax.vmap(one)(latent, means, draws["baseline"], decoder_from_sites(draws))
        return self.in_gene_order(rates)


def choose_gene_space(
    arrays,
    targets: Sequence[str],
    modelled_genes: str | int | Sequence[str] | None = None,
    programs: int | None = None,
) -> GeneSpace:
    """The gene space of a screen (see :meth:`causalcell.models.lcd.LCD.fit`).

    Parameters
    ----------
    arrays
        :class:`causalcell.data.ScreenArrays` of the screen.
    targets
        Genes perturbed in training: always modelled.
    modelled_genes
        ``None``: every gene when there are at most :data:`FULL_GENE_LIMIT`, else the targets.
        ``"all"``: every gene. An integer ``n``: the targets plus the ``n`` other genes of
        largest variance of log1p-normalised expression (highly variable genes). A list of
        names: the targets plus these.
    programs
        Number of latent programs; ``None``: 0 when every gene is modelled, else
        :data:`DEFAULT_PROGRAMS`.

    Raises
    ------
    ValueError
        For unknown gene names, a negative number, or programs with no gene to decode.
    """
    genes = tuple(arrays.genes)
    chosen = set(targets)
    if modelled_genes is None:
        modelled_genes = "all" if len(genes) <= FULL_GENE_LIMIT else ()
    if isinstance(modelled_genes, str):
        if modelled_genes != "all":
            raise ValueError(
                f"modelled_genes must be 'all', a number or a list of genes, got "
                f"{modelled_genes!r}."
            )
        chosen = set(genes)
    elif isinstance(modelled_genes, int | np.integer):
        if modelled_genes < 0:
            raise ValueError(f"modelled_genes must be non-negative, got {modelled_genes}.")
        ranked = [genes[i] for i in variable_genes(arrays.counts, arrays.size_factors)]
        chosen |= set([gene for gene in ranked if gene not in chosen][:modelled_genes])
    else:
        unknown = [gene for gene in modelled_genes if gene not in genes]
        if unknown:
            raise ValueError(f"modelled_genes names genes that are not in the data: {unknown}.")
        chosen |= set(modelled_genes)
    modelled = np.array([position for position, gene in enumerate(genes) if gene in chosen], int)
    if programs is None:
        programs = 0 if len(modelled) == len(genes) else DEFAULT_PROGRAMS
    if programs < 0:
        raise ValueError(f"programs must be non-negative, got {programs}.")
    if programs and len(modelled) == len(genes):
        raise ValueError(
            "programs decode the genes that are not modelled, and every gene is modelled here: "
            "pass programs=0, or fewer modelled_genes."
        )
    if len(modelled) == 0:
        raise ValueError("No gene is modelled: the screen perturbs none; name modelled_genes.")
    return GeneSpace(genes, modelled, int(programs))


def reduce_programs(matrix, programs: int):
    """The drift among modelled genes with programs as unmeasured mediators.

    The Schur complement ``S = A_MM - A_MP A_PP^{-1} A_PM``: when programs relax to their fixed
    point given the modelled genes, the stationary responses of modelled genes to shifts of
    modelled genes are those of ``S`` (``-S^{-1} e_j``, the modelled rows of ``-A^{-1} e_j``).
    CLIPR on those responses returns ``S``'s direct effects, in which an effect carried through
    a program counts as direct. ``programs = 0`` returns ``matrix``.
    """
    if programs == 0:
        return matrix
    modelled = matrix.shape[-1] - programs
    top, bottom = matrix[..., :modelled, :], matrix[..., modelled:, :]
    through = solve(bottom[..., modelled:], bottom[..., :modelled])
    return top[..., :modelled] - top[..., modelled:] @ through
