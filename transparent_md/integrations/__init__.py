"""Glue to VM managers: turn what they know about a guest into records and bindings."""
