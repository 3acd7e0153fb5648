"""Safety: one-line errors, faults and their exit codes, signals, the run-directory lock, checks."""
