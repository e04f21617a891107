"""Attack tools for the hostile-neighbour tests and the bench.

Each module is a small, bounded program meant to run inside a guest's network
namespace (`ip netns exec NS python -m transparent_md.lab.attacks.<tool> ...`): it
does one kind of harm a hostile guest can do, stops after a fixed count or time,
and prints one JSON line saying what it achieved. Nothing here is imported by the
product; `launch` holds the helpers tests and the bench use to start them.
"""
