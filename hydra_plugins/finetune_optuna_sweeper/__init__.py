"""A Hydra sweeper on current Optuna (4 or newer), with the official optuna sweeper's knob names.

The official hydra-optuna-sweeper 1.3 pins optuna<3 and fails with any database storage on
SQLAlchemy 2, so a search could not be resumed or shared. This plugin is thin glue: Optuna does
the work. `python train.py -m hparams_search=optuna` uses it (conf/hparams_search/optuna.yaml).
"""
