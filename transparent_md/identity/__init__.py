"""Identity: turns a connection's peer (shadow) address into the guest that asked."""

from transparent_md.identity.guest import Guest

__all__ = ["Guest"]
