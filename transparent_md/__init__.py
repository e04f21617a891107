"""transparent-md: instance metadata (169.254.169.254) for Linux hypervisors."""



def __getattr__(name: str) -> str:
    """`__version__`, looked up when asked: importlib.metadata costs every CLI call a
    few tens of milliseconds, and only --version and `status` need it."""
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transparent-md")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"
