"""The access log's lines: every field, text and JSON, batched writes that lose nothing."""

from __future__ import annotations

import asyncio
import json
import os

from transparent_md.identity import Guest
from transparent_md.responder.access_log import AccessLog

GUEST = Guest(bridge="br0", port="vnet3", ifindex=7, mac="52:54:00:12:34:56", ip="10.0.0.5")


class Parser:
    def get_method(self) -> bytes:
        return b"GET"


class Prepared:
    instance_id = "i-0abc"


def read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode()


def test_text_lines_name_guest_instance_request_status_and_time():
    r, w = os.pipe()
    log = AccessLog(fd=w)
    log.record(GUEST, Prepared(), Parser(), b"/latest/meta-data/instance-id", 200, 41)
    log.record(None, None, Parser(), b"/x\xff", 404, 7)  # outside a loop: written at once
    lines = read_all(r).splitlines()
    assert lines[0].endswith("access port=vnet3 bridge=br0 mac=52:54:00:12:34:56 ip=10.0.0.5 "
                             "instance=i-0abc method=GET path=/latest/meta-data/instance-id "
                             "status=200 us=41")
    assert "port=- bridge=- mac=- ip=- instance=- method=GET path=/x\\xff status=404" in lines[1]


def test_json_lines_are_batched_in_a_loop_and_flushed_on_time():
    r, w = os.pipe()
    log = AccessLog(json_lines=True, fd=w)

    async def burst() -> str:
        for _ in range(100):
            log.record(GUEST, Prepared(), Parser(), b"/latest/", 200, 5)
        before = read_all(r)
        await asyncio.sleep(0.4)
        return before

    before = asyncio.run(burst())
    assert before == ""  # nothing written per request
    lines = [json.loads(line) for line in read_all(r).splitlines()]
    assert len(lines) == 100
    assert lines[0]["message"] == "access" and lines[0]["port"] == "vnet3"
    assert lines[0]["instance"] == "i-0abc" and lines[0]["status"] == 200
