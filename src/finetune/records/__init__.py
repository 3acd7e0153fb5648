"""Records of a run: loggers, pictures, learning curves, progress bars."""
