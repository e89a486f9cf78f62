"""The dgstudy version: the one place it is written (pyproject.toml reads it; stores record it)."""
__version__ = "0.2.0"
