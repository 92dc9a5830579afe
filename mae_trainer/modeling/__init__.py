"""MAE models and their registration with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from .configuration_mae import PRESETS, MAEConfig
from .modeling_mae import (
    MAEForImageClassification,
    MAEForPreTraining,
    MAEForPreTrainingOutput,
    MAEImageClassifierOutput,
    MAEModel,
    MAEModelOutput,
    MAEPreTrainedModel,
    sincos_pos_embed_2d,
)

AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MAEConfig, MAEForImageClassification, exist_ok=True)

__all__ = [
    "PRESETS",
    "MAEConfig",
    "MAEForImageClassification",
    "MAEForPreTraining",
    "MAEForPreTrainingOutput",
    "MAEImageClassifierOutput",
    "MAEModel",
    "MAEModelOutput",
    "MAEPreTrainedModel",
    "sincos_pos_embed_2d",
]
