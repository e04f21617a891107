"""The SQLite schema of the instance store, and bringing older store files up to it.

The identity fields are kept as columns beside the JSON record (and in a covering
index), so loading a snapshot reads them without parsing a single record.
"""

from __future__ import annotations

import json
import sqlite3

from transparent_md.store.record import parse_record

BINDING_COLUMNS = ("mac", "ip", "bridge", "port")

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    record      TEXT NOT NULL,     -- JSON, as Instance.to_mapping() spells it
    revision    INTEGER NOT NULL,  -- bumped on every change to this row
    password    TEXT,              -- OpenStack password, set once by the guest
    mac TEXT, ip TEXT, bridge TEXT, port TEXT  -- copies of the record's, for matching
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('revision', 0);
"""
# A snapshot load scans this index alone: a few dozen bytes a row, never the JSON.
BINDING_INDEX = """
CREATE INDEX IF NOT EXISTS instances_binding
    ON instances (instance_id, revision, mac, ip, bridge, port)
"""
SELECT_BINDINGS = "SELECT instance_id, revision, mac, ip, bridge, port FROM instances"


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create the tables, or add and fill the binding columns a store file lacks."""
    db.executescript(SCHEMA)
    if not _missing_columns(db):
        db.execute(BINDING_INDEX)
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for column in _missing_columns(db):  # asked again: another process may have won
            db.execute(f"ALTER TABLE instances ADD COLUMN {column} TEXT")
        rows = db.execute("SELECT instance_id, record FROM instances").fetchall()
        for instance_id, record in rows:
            instance = parse_record(json.loads(record), instance_id)
            db.execute(
                "UPDATE instances SET mac = ?, ip = ?, bridge = ?, port = ? "
                "WHERE instance_id = ?",
                (instance.mac, instance.ip, instance.bridge, instance.port, instance_id))
        db.execute(BINDING_INDEX)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _missing_columns(db: sqlite3.Connection) -> list[str]:
    present = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
    return [c for c in BINDING_COLUMNS if c not in present]
