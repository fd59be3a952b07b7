"""Model names, aliases and loading: a MODEL argument becomes a torch module plus its facts."""

from tvc.models.load import LoadedModel, ModelInfo, load_model

__all__ = ["LoadedModel", "ModelInfo", "load_model"]
