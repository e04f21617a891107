"""Hostile-neighbour tests (issue 9): one guest attacks, the others must not notice.

Markers (`netns`, `slow`) are declared in pyproject.toml; fixtures in tests/conftest.py
and the world each module builds in tests/hostile/world.py."""
