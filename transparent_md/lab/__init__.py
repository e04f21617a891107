"""The lab: throw-away hypervisors in network namespaces for the demo, tests and bench.

Nothing here ships to a hypervisor's daemon path: the runtime packages never import
it, and its extra dependencies come with the `lab` extra (`pip install .[lab]`).
"""
