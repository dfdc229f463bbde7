"""Observability: the MLflow run tree (parent -> stage -> trial) and the plots logged to it."""
