"""The SQLite schema of the instance store, and bringing older store files up to it.

The identity fields are kept as columns beside the JSON record (and in a covering
index), so loading a snapshot reads them without parsing a single record.
"""

from __future__ import annotations

import json
import sqlite3

from transparent_md.store.record import Instance, as_served, parse_record

# Column -> SQL type. `port_ifindex` and `parked` came later: a store file without them
# gains them (NULL/0 read as "no link" and "not parked", so an old port binding is by
# name only and serves nobody until bound again: see policy.serves).
BINDING_COLUMNS = {"mac": "TEXT", "ip": "TEXT", "bridge": "TEXT", "port": "TEXT",
                   "port_ifindex": "INTEGER", "parked": "INTEGER", "ipv6": "TEXT"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    record      TEXT NOT NULL,     -- JSON, as Instance.to_mapping() spells it
    revision    INTEGER NOT NULL,  -- bumped on every change to this row
    password    TEXT,              -- OpenStack password, set once by the guest
    mac TEXT, ip TEXT, bridge TEXT, port TEXT,  -- copies of the record's, for matching
    port_ifindex INTEGER, parked INTEGER NOT NULL DEFAULT 0,
    ipv6 TEXT                          -- the record's IPv6 addresses, space-separated
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('revision', 0);
"""
# A snapshot load scans this index alone: a few dozen bytes a row, never the JSON.
BINDING_INDEX = """
CREATE INDEX IF NOT EXISTS instances_binding3
    ON instances (instance_id, revision, mac, ip, bridge, port, port_ifindex, parked, ipv6)
"""
# The indexes of versions before port_ifindex and before ipv6: they no longer cover a
# snapshot load.
OLD_BINDING_INDEXES = ("DROP INDEX IF EXISTS instances_binding",
                       "DROP INDEX IF EXISTS instances_binding2")
SELECT_BINDINGS = ("SELECT instance_id, revision, mac, ip, bridge, port, port_ifindex, parked, "
                   "ipv6 FROM instances")
# Writers set the record and every matching column together.
UPSERT_RECORD = (
    "INSERT INTO instances (instance_id, record, revision, mac, ip, bridge, port, "
    "port_ifindex, parked, ipv6) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(instance_id) DO UPDATE SET record = excluded.record, "
    "revision = excluded.revision, mac = excluded.mac, ip = excluded.ip, "
    "bridge = excluded.bridge, port = excluded.port, port_ifindex = excluded.port_ifindex, "
    "parked = excluded.parked, ipv6 = excluded.ipv6")


def matching_columns(instance: Instance) -> tuple:
    """The record's values of BINDING_COLUMNS, in that order."""
    return (instance.mac, instance.ip, instance.bridge, instance.port, instance.port_ifindex,
            int(instance.parked), " ".join(instance.ipv6) or None)


# Readers find the rows changed since their last read by revision (bindings_reader).
# A write's identity check reads only the records sharing a MAC (or, for records
# without one, an IP) with what it writes: by these indexes, not a scan of the store.
IDENTITY_INDEXES = """
CREATE INDEX IF NOT EXISTS instances_mac ON instances (mac);
CREATE INDEX IF NOT EXISTS instances_ip ON instances (ip) WHERE mac IS NULL;
CREATE INDEX IF NOT EXISTS instances_revision ON instances (revision);
"""
# A guest's whole record, with its matching columns (to tell whether it still matches).
SELECT_RECORD = ("SELECT record, revision, mac, ip, bridge, port, port_ifindex, parked "
                 "FROM instances WHERE instance_id = ?")
SELECT_BY_MAC = SELECT_BINDINGS + " WHERE mac = ?"
SELECT_BY_IP = SELECT_BINDINGS + " WHERE mac IS NULL AND ip IS ?"


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create the tables, or add and fill the binding columns a store file lacks.

    Filling them parks the records an older version accepted that are no longer
    allowed (secrets matched by IP alone: `record.binding_problem`)."""
    db.executescript(SCHEMA)
    if not _missing_columns(db):
        db.execute(BINDING_INDEX)
        db.executescript(IDENTITY_INDEXES)
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for column in _missing_columns(db):  # asked again: another process may have won
            default = " NOT NULL DEFAULT 0" if column == "parked" else ""
            db.execute(f"ALTER TABLE instances ADD COLUMN {column} "
                       f"{BINDING_COLUMNS[column]}{default}")
        rows = db.execute("SELECT instance_id, record FROM instances").fetchall()
        for instance_id, record in rows:
            instance = as_served(parse_record(json.loads(record), instance_id, stored=True))
            db.execute(
                "UPDATE instances SET record = ?, mac = ?, ip = ?, bridge = ?, port = ?, "
                "port_ifindex = ?, parked = ?, ipv6 = ? WHERE instance_id = ?",
                (json.dumps(instance.to_mapping()), *matching_columns(instance),
                 instance_id))
        for drop in OLD_BINDING_INDEXES:
            db.execute(drop)
        db.execute(BINDING_INDEX)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    db.executescript(IDENTITY_INDEXES)


def _missing_columns(db: sqlite3.Connection) -> list[str]:
    present = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
    return [c for c in BINDING_COLUMNS if c not in present]
