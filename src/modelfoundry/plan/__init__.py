"""`foundry plan`: what a model costs to train, fine-tune and serve, by arithmetic.

hardware.py holds GPU presets, models.py parameter counts, estimate.py the formulas, cli.py the
commands. Every number comes with the formula that produced it so a reader can check it.
"""
