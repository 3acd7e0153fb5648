"""Models: building one from its source, loading weights safely, freezing, the feature cache."""
