"""`transparent-md bench`: what a metadata request costs, measured against the usual choices.

One run builds its own namespaces, loads every server with the same wrk load, drives a
boot storm, and reports requests/s, latency, server CPU per request and RSS beside the
targets. Modules: `topology` (namespaces), `servers` (what is measured), `wrk` and
`storm` (load), `procstat` (CPU/RSS), `report` and `chart` (output), `runner` (order).
"""
