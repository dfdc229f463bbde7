"""The pyfunc's code file (MLflow "models from code"): logged with the model instead of a pickled object.

MLflow runs this file when it loads the model; it only names the class, which comes from the
installed stagetune. Not imported by stagetune itself.
"""

from mlflow.models import set_model

from stagetune.serving.pyfunc_model import StagetuneModel

set_model(StagetuneModel())
