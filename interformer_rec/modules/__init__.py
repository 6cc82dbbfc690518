"""InterFormer's building blocks, one job per module (names from the paper).

* :mod:`.embeddings` — dense field tokens, EBC/EC construction, lookups to tokens and
  padded sequences.
* :mod:`.cross` — Cross Arch: LCE, SelfGating, PMA, recent-K gather, summaries.
* :mod:`.interaction` — interaction variants (dot, dcn, projection, dhen, dhen_flat) and the
  Interaction Arch.
* :mod:`.sequence` — MaskNet, RoPE, SDPA self-attention, PFFN, Sequence Arch.
"""

from interformer_rec.modules.cross import LCE, PMA, CrossArch, NonSequenceSummary, SelfGating, SequenceSummary, gather_recent
from interformer_rec.modules.embeddings import DenseTokens, ProjectedDenseToken, build_ebc, build_ec
from interformer_rec.modules.interaction import (
    DCNInteraction,
    DHENFlatInteraction,
    DHENInteraction,
    DHENLayer,
    DotInteraction,
    InteractionArch,
    ProjectionInteraction,
    build_interaction,
)
from interformer_rec.modules.sequence import PFFN, MaskNet, MultiHeadSelfAttention, SequenceArch, recency_positions, rotary

__all__ = [
    "CrossArch",
    "DCNInteraction",
    "DHENFlatInteraction",
    "DHENInteraction",
    "DHENLayer",
    "DenseTokens",
    "DotInteraction",
    "InteractionArch",
    "LCE",
    "MaskNet",
    "MultiHeadSelfAttention",
    "NonSequenceSummary",
    "PFFN",
    "PMA",
    "ProjectedDenseToken",
    "ProjectionInteraction",
    "SelfGating",
    "SequenceArch",
    "SequenceSummary",
    "build_ebc",
    "build_ec",
    "build_interaction",
    "gather_recent",
    "recency_positions",
    "rotary",
]
