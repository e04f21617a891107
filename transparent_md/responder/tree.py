"""A path tree of prepared replies with directory listings derived from its leaves.

Both metadata flavours are "a set of leaf documents plus directories that list their
children"; this builds the flat `{path: Reply}` table the dispatcher looks up, with
paths stored without leading or trailing slashes (b"meta-data/placement/region"), the
tree's own root under b"".

A derived listing names a subdirectory with a trailing `/` and a leaf without, one per
line, no final newline, in byte order of the names: what AWS's IMDS answers for
`meta-data/` and below (the user guide's listings, and amazon-ec2-metadata-mock, which
sorts its routes). A flavour whose service lists otherwise sets its own with `listing`.
"""

from __future__ import annotations

from transparent_md.responder.http import JSON, TEXT, Reply


class TreeBuilder:
    """Collect leaves, then `build()` adds a listing Reply for every directory."""

    def __init__(self) -> None:
        self._leaves: dict[str, Reply] = {}
        self._listing_overrides: dict[str, list[str]] = {}

    def text(self, path: str, value: str | bytes) -> None:
        self._leaves[path] = Reply(200, value if isinstance(value, bytes) else value.encode(),
                                   TEXT)

    def json(self, path: str, document: bytes) -> None:
        self._leaves[path] = Reply(200, document, JSON)

    def raw(self, path: str, reply: Reply) -> None:
        self._leaves[path] = reply

    def listing(self, directory: str, entries: list[str]) -> None:
        """Use these lines instead of the derived listing (EC2 public-keys: `0=name`)."""
        self._listing_overrides[directory] = entries

    def build(self) -> dict[bytes, Reply]:
        children: dict[str, dict[str, None]] = {}  # dict keeps insertion order
        for path in self._leaves:
            parts = path.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                name = parts[depth] + ("/" if depth < len(parts) - 1 else "")
                children.setdefault(parent, {})[name] = None
        table = {path.encode(): reply for path, reply in self._leaves.items()}
        for directory, names in children.items():
            lines = self._listing_overrides.get(directory)
            if lines is None:
                lines = sorted(names, key=_name_order)
            table[directory.encode()] = Reply(200, "\n".join(lines).encode(), TEXT)
        return table


def _name_order(entry: str) -> str:
    """Sort key of a listing line: the name itself, a directory's `/` left out."""
    return entry.rstrip("/")
