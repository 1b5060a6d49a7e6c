"""One trainer for every method on the same steers: localized DPO, standard DPO, SFT on the span, full SFT.

from localdpo.trainer import load_config, run_training
result = run_training(load_config("experiments/configs/tiny.yaml", ["method=dpo"]))
"""

from localdpo.trainer.config import ConfigError, RunConfig, load_config, save_config
from localdpo.trainer.loop import Trainer, TrainResult, run_training
from localdpo.trainer.methods import Method, method_loss

__all__ = [
    "ConfigError",
    "Method",
    "RunConfig",
    "TrainResult",
    "Trainer",
    "load_config",
    "method_loss",
    "run_training",
    "save_config",
]
