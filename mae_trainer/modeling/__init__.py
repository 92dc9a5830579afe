"""MAE models and their registration with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_mae import PRESETS, MAEConfig
from .modeling_mae import (
    MAEForPreTraining,
    MAEForPreTrainingOutput,
    MAEModel,
    MAEModelOutput,
    MAEPreTrainedModel,
    sincos_pos_embed_2d,
)

AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)

__all__ = [
    "PRESETS",
    "MAEConfig",
    "MAEForPreTraining",
    "MAEForPreTrainingOutput",
    "MAEModel",
    "MAEModelOutput",
    "MAEPreTrainedModel",
    "sincos_pos_embed_2d",
]
