"""The installed package's version, read once from its metadata (no other vivit module is imported)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vivit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
