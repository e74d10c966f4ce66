"""modelfoundry: from data to a trained, evaluated, packaged model with one YAML file.

    import modelfoundry as mf
    run = mf.train("config.yaml")          # or a dict
    predictor = mf.load(run.path)
    predictor.predict(inputs)
"""
from modelfoundry.errors import UserError

__all__ = ["Predictor", "Run", "UserError", "load", "train"]
__version__ = "0.1.0"

_LAZY = {"train": "modelfoundry.runner", "Run": "modelfoundry.runner",
         "load": "modelfoundry.predictor", "Predictor": "modelfoundry.predictor"}


def __getattr__(name: str):
    # Lazy: `foundry --help` and config errors should not pay seconds for importing torch.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelfoundry' has no attribute {name!r}")
