"""Placeholder so the CLI imports; the owner of `demo` replaces this module."""


def register(sub):
    pass
