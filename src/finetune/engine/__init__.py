"""The run engine: setup, fit and test of one run, whatever its task or model source.

run.py reads top to bottom; loop.py is the inner loop; checkpoint.py, resume.py and rundir.py
own what a run leaves on disk; build.py puts a run's parts together.
"""
