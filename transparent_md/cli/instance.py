"""Placeholder so the CLI imports; the owner of `instance` replaces this module."""


def register(sub):
    pass
