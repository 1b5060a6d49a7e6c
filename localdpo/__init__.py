"""localdpo: train language models on steers with a DPO loss localized to the corrected token span."""

from localdpo.losses import (
    LossSpec,
    LossType,
    PreferenceLossOutput,
    localized_dpo_loss,
    masked_sft_loss,
    token_logps,
)
from localdpo.steers.steer import Steer, SteerFileError, load_steers, save_steers
from localdpo.steers.tokenization import (
    SpanMode,
    SteerTooLongError,
    TokenizedSteer,
    divergent_span,
    tokenize_steer,
)

__version__ = "0.1.0"

__all__ = [
    "LossSpec",
    "LossType",
    "PreferenceLossOutput",
    "SpanMode",
    "Steer",
    "SteerFileError",
    "SteerTooLongError",
    "TokenizedSteer",
    "divergent_span",
    "load_steers",
    "localized_dpo_loss",
    "masked_sft_loss",
    "save_steers",
    "token_logps",
    "tokenize_steer",
]
