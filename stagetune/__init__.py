"""stagetune: staged hyperparameter tuning for PyTorch models."""
