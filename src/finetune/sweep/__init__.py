"""Sweeps: the summary callback and pruning reports (the Optuna sweeper is in hydra_plugins/)."""
