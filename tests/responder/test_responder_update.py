"""Records changing under a running responder: old or new, never mixed, and never stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from tests.responder.conftest import RECORD_A
from transparent_md.store import open_store, parse_record

OLD = ("m5.large", "eu-west-1a", "eu-west-1")
NEW = ("c6i.xlarge", "us-east-2b", "us-east-2")
UPDATES = 6
# The store looks for a replaced file every CHECK_INTERVAL (1 s); room for a slow CI.
REPLACED_FILE_SEEN_WITHIN_S = 5.0
# A change is loaded by the store's loader thread within milliseconds; room for a slow CI.
CHANGE_SEEN_WITHIN_S = 2.0


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "transparent_md", "instance", *args], check=True,
                   capture_output=True)


def test_update_while_a_client_loops_sees_only_whole_records(live_unthrottled):
    live = live_unthrottled
    seen: list[tuple[int, tuple[str, str, str] | None]] = []
    stop = threading.Event()

    def loop() -> None:
        conn = live.connect()
        while not stop.is_set():
            response = conn.request("GET", "/latest/dynamic/instance-identity/document")
            if response.status != 200:
                seen.append((response.status, None))
                continue
            doc = json.loads(response.body)
            seen.append((200, (doc["instanceType"], doc["availabilityZone"], doc["region"])))
        conn.close()

    client = threading.Thread(target=loop)
    client.start()
    try:
        for i in range(UPDATES):
            kind, zone, _ = NEW if i % 2 == 0 else OLD
            cli("update", "i-aaaa", "--instance-type", kind, "--availability-zone", zone,
                "--store", live.store_path)
    finally:
        stop.set()
        client.join()
    statuses = {status for status, _ in seen}
    answers = {answer for _, answer in seen}
    assert statuses == {200}
    assert answers <= {OLD, NEW}
    assert NEW in answers  # the change did reach the running responder
    # the last update restored OLD; the next request must see it
    assert live.get("/latest/meta-data/instance-type").body == OLD[0].encode()


def test_a_record_changed_after_it_was_served_is_new_within_a_load(live):
    """The same keep-alive connection, the record already loaded and rendered: the
    store's loader thread reads the change and the loop swaps it in."""
    conn = live.connect()
    try:
        assert conn.request("GET", "/latest/meta-data/hostname").body == b"alpha"
        assert "i-aaaa" in live.responder.state.store.cache
        writer = open_store(live.store_path)
        try:
            writer.update(parse_record({**RECORD_A, "hostname": "alpha-2"}))
        finally:
            writer.close()
        deadline = time.monotonic() + CHANGE_SEEN_WITHIN_S
        while (body := conn.request("GET", "/latest/meta-data/hostname").body) == b"alpha" and (
                time.monotonic() < deadline):
            time.sleep(0.005)
        assert body == b"alpha-2"
    finally:
        conn.close()


def test_a_store_file_replaced_under_a_serving_responder_is_served_within_seconds(live, tmp_path):
    """The serving loop's timer looks for a replaced file; requests never read the clock
    for it (the store hands those checks over to the responder)."""
    assert live.get("/latest/meta-data/hostname").body == b"alpha"
    staged = str(tmp_path / "staged.db")
    replacement = open_store(staged)
    try:
        replacement.put_many([parse_record({**RECORD_A, "hostname": "alpha-replaced"})])
    finally:
        replacement.close()
    os.replace(staged, live.store_path)
    deadline = time.monotonic() + REPLACED_FILE_SEEN_WITHIN_S
    while (body := live.get("/latest/meta-data/hostname").body) != b"alpha-replaced" and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    assert body == b"alpha-replaced"
