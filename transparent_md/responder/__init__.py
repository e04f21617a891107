"""Responder: the HTTP side guests talk to (EC2 and OpenStack trees, IMDSv2 tokens)."""

from transparent_md.responder.limits import ResponderLimits
from transparent_md.responder.server import Resolver, Responder

__all__ = ["Resolver", "Responder", "ResponderLimits"]
