"""modelfoundry: from data to a trained, evaluated, packaged model with one YAML file.

    import modelfoundry as mf
    run = mf.train("config.yaml")          # or a dict
    predictor = mf.load(run.path)
    predictor.predict(inputs)

Imports are lazy so that `foundry --help` and config errors do not wait seconds for torch.
"""

from __future__ import annotations

from modelfoundry.errors import UserError

__all__ = ["Predictor", "Run", "UserError", "load", "train"]
__version__ = "0.1.0"


def train(config, overrides: list[str] | None = None, run_dir=None, resume: bool = False, console=None):
    """Train, evaluate and package a model from a YAML path or a dict; returns the `Run`.

    See `modelfoundry.runner.train`.
    """
    from modelfoundry.runner import train as run_training

    return run_training(config, overrides, run_dir, resume, console)


def load(path, device: str = "cpu", backend: str = "auto"):
    """Load a packaged model (a run folder or its model/ folder) as a `Predictor`."""
    from modelfoundry.predictor import load as load_package

    return load_package(path, device, backend)


def __getattr__(name: str):
    if name in ("Predictor", "Run"):
        import importlib

        return getattr(
            importlib.import_module(
                "modelfoundry.predictor" if name == "Predictor" else "modelfoundry.runner"
            ),
            name,
        )
    raise AttributeError(f"module 'modelfoundry' has no attribute {name!r}")
