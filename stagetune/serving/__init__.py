"""The champion as an MLflow pyfunc model: fitted preprocessing that rebuilds model inputs from raw rows."""
