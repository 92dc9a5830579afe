"""mae_trainer: fast Masked Autoencoder pretraining (DailyMAE) with FFCV data, DeepSpeed and HF models."""

from .modeling import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel

__version__ = "0.1.0"
__all__ = ["MAEConfig", "MAEForImageClassification", "MAEForPreTraining", "MAEModel", "__version__"]
