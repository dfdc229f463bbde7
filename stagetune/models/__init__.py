"""Model families (mlp, cnn, custom)."""
