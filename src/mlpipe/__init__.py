"""mlpipe: a DVC-centric, reproducible ML pipeline template."""

__version__ = "0.1.0"
