"""A user's own model with its own hyperparameters, tuned by stagetune (see README.md here)."""
