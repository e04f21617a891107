"""transparent-md: instance metadata (169.254.169.254) for Linux hypervisors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transparent-md")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
