"""The search space as Optuna params and typed hyperparameters, and the pure narrowing of coarse ranges."""
