"""Placeholder so the CLI imports; the owner of `run` replaces this module."""


def register(sub):
    pass
