"""Model families (mlp, cnn, custom), one file each, registered by name in `stagetune.models.registry`."""

from stagetune.models.registry import build_model, check_model_config, family_names, get_family, tuned_fields

__all__ = ["build_model", "check_model_config", "family_names", "get_family", "tuned_fields"]
