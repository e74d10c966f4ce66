"""modelfoundry: from data to a trained, evaluated, packaged model with one YAML file.

    import modelfoundry as mf
    run = mf.train("config.yaml")          # or a dict
    predictor = mf.load(run.path)
    predictor.predict(inputs)
"""
from modelfoundry.errors import UserError
from modelfoundry.predictor import Predictor, load
from modelfoundry.runner import Run, train

__all__ = ["Predictor", "Run", "UserError", "load", "train"]
__version__ = "0.1.0"
