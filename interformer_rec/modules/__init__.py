"""InterFormer's building blocks, one job per module (names from the paper). Modules take
plain sizes and options; only :class:`~interformer_rec.models.interformer.InterFormer`
reads the config. The pure tensor functions they use live in :mod:`interformer_rec.ops`.

* :mod:`.embeddings` — dense field tokens, EBC/EC construction, lookups to tokens and
  padded sequences.
* :mod:`.cross` — Cross Arch: LCE, SelfGating, PMA, summaries.
* :mod:`.interaction` — interaction variants (dot, dcn, projection, dhen, dhen_flat) and the
  Interaction Arch.
* :mod:`.sequence` — MaskNet, SDPA self-attention (RoPE, local attention), PFFN, Sequence
  Arch.
"""

from interformer_rec.modules.cross import LCE, PMA, CrossArch, NonSequenceSummary, SelfGating, SequenceSummary
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
from interformer_rec.modules.sequence import PFFN, MaskNet, MultiHeadSelfAttention, SequenceArch

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
]
