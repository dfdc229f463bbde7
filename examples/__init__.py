"""Runnable examples: a package, so `model.import_path: examples.<name>.<module>:<factory>` imports."""
