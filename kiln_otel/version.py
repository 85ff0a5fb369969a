"""The package version, kept apart so pyproject can read it without importing anything heavy."""

__version__ = "0.1.0"
