"""The package version (one place; read by the build, reports and ``--version``)."""

__version__ = "0.2.0"
