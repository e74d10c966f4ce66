"""`import modelfoundry as mf` gives train/load/Predictor/Run, whatever was imported before."""

import subprocess
import sys


def test_mf_train_stays_the_function_after_the_training_subpackage_is_imported():
    code = (
        "import modelfoundry.training.loop, modelfoundry as mf, modelfoundry.runner, "
        "modelfoundry.training.optim;"
        "print(callable(mf.train), callable(mf.load), mf.Predictor.__name__, mf.Run.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "Predictor", "Run"]


def test_cli_help_does_not_import_torch():
    code = "import sys, modelfoundry.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_training_subpackage_and_the_train_function_have_different_names():
    code = (
        "import modelfoundry.training, modelfoundry as mf; "
        "print(type(modelfoundry.training).__name__, callable(mf.train))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["module", "True"]
