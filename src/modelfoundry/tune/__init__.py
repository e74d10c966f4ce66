"""`foundry tune`: hyperparameter search with Optuna (TPE sampler, median pruning, shared study storage).

space.py parses and checks `tune.space`; search.py runs the study and trains the best config;
report.py writes tune_report.html; cli.py is the command.
"""
