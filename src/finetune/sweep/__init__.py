"""Sweeps: the summary callback, pruning reports, and the Optuna sweeper's work (Hydra finds its
entry point in hydra_plugins/)."""
