"""Import files are untrusted input: bounded cost, every problem reported, clear fixes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from transparent_md.errors import UserError
from transparent_md.store import open_store
from transparent_md.store.importfile import MAX_IMPORT_BYTES, read_records

REPO = str(Path(__file__).resolve().parents[2])

# The classic "billion laughs": nine levels of nine aliases, 9^9 strings once expanded.
BILLION_LAUGHS = (
    'a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n'
    + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n"
              for p, n in zip("abcdefgh", "bcdefghi", strict=True))
)
# Issue 9's bounds for refusing it: within 1 s and 100 MB (peak RSS of the whole
# process, interpreter and imports included).
MAX_REFUSE_SECONDS = 1.0
MAX_REFUSE_RSS_BYTES = 100 * 1000 * 1000

# Runs the import in a fresh process and reports its own time and peak RSS. The peak is
# VmHWM of the process's own memory: ru_maxrss would carry over the parent's RSS at
# fork (the pytest process, hundreds of MB late in a full run).
MEASURE = textwrap.dedent("""
    import json, re, sys, time
    from transparent_md.errors import UserError
    from transparent_md.store.importfile import read_records
    start = time.monotonic()
    try:
        read_records(sys.argv[1])
        outcome = "accepted"
    except UserError as exc:
        outcome = str(exc)
    elapsed = time.monotonic() - start
    status = open("/proc/self/status").read()
    peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
    print(json.dumps({"outcome": outcome, "seconds": elapsed, "rss": peak_kib * 1024}))
""")


def test_billion_laughs_is_refused_fast_and_small(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS.encode()) == 324
    out = subprocess.run([sys.executable, "-c", MEASURE, str(bomb)], capture_output=True,
                         text=True, cwd=REPO, timeout=60, check=True).stdout
    result = json.loads(out)
    assert "line 1" in result["outcome"] and "anchor &a refused" in result["outcome"]
    assert result["seconds"] < MAX_REFUSE_SECONDS
    assert result["rss"] < MAX_REFUSE_RSS_BYTES


@pytest.mark.parametrize("text,line,words", [
    ('- instance_id: i-1\n  mac: &m "52:54:00:00:00:01"\n', 2, "anchor &m"),
    ('- &r {instance_id: i-1, mac: "52:54:00:00:00:01"}\n- *r\n', 1, "anchor &r"),
    ('- instance_id: i-1\n  mac: "52:54:00:00:00:01"\n  <<: *x\n', 3, "alias *x"),
])
def test_any_anchor_or_alias_is_refused_with_its_line(tmp_path, text, line, words):
    source = tmp_path / "r.yaml"
    source.write_text(text)
    with pytest.raises(UserError) as caught:
        read_records(str(source))
    assert f"line {line}:" in str(caught.value) and words in str(caught.value)


def test_a_file_over_the_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    with big.open("wb") as out:
        out.truncate(MAX_IMPORT_BYTES + 1)  # sparse: no disk, no parse
    with pytest.raises(UserError, match="larger than 32 MiB"):
        read_records(str(big))


def test_deep_nesting_is_a_user_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000)
    with pytest.raises(UserError):
        read_records(str(deep))
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_records(str(deep_json))


def test_every_problem_of_a_file_is_reported_with_its_line(tmp_path):
    source = tmp_path / "bad.yaml"
    source.write_text(textwrap.dedent("""\
        - instance_id: i-1
          mac: 52:54:00:12:34:56
        - instance_id: i-2
          ip: 10.0.0.2
          launch_index: -1
        - instance_id: i-3
          mac: "52:54:00:00:00:03"
          account_id: 000000000000
        - instance_id: i-4
          mac: "52:54:00:00:00:04"
        - instance_id: i-4
          mac: "52:54:00:00:00:05"
    """))
    with pytest.raises(UserError) as caught:
        read_records(str(source))
    message = str(caught.value)
    assert "5 problems, nothing imported" in message
    # The unquoted MAC: YAML 1.1 read it as a base-60 number; the fix is spelled out.
    assert (f"line 2: record #1 (i-1), field 'mac': YAML read the unquoted value as the "
            f"number {41135085296}; quote it: mac: \"52:54:00:12:34:56\"") in message
    assert "line 5: record #2 (i-2), field 'launch_index'" in message
    assert "line 3: record #2 (i-2), field 'mac': a record with neither a MAC nor" in message
    assert "line 8: record #3 (i-3), field 'account_id': YAML read" in message
    assert "line 11: record #5: instance_id 'i-4' appears twice (first on line 9)" in message


def test_import_dash_reads_stdin_and_warns_about_unbound_secrets(tmp_path):
    path = str(tmp_path / "i.db")
    records = textwrap.dedent("""\
        - instance_id: i-bound
          mac: "52:54:00:00:00:01"
          port: lo
          user_data: "#cloud-config\\n"
        - instance_id: i-loose
          mac: "52:54:00:00:00:02"
          ip: 10.0.0.2
          bridge: br0
          user_data: "#cloud-config\\n"
        - instance_id: i-ghost
          mac: "52:54:00:00:00:03"
          port: tmd-no-such0
          user_data: "#cloud-config\\n"
    """)
    done = run_cli(["instance", "import", "-", "--store", path], stdin=records)
    assert done.returncode == 0, done.stderr
    stored = {i.instance_id: i for i in open_store(path).list()}
    assert set(stored) == {"i-bound", "i-loose", "i-ghost"}
    # `lo` exists in every namespace: the binding names its link (ifindex 1).
    assert (stored["i-bound"].port, stored["i-bound"].port_ifindex) == ("lo", 1)
    assert stored["i-ghost"].parked and stored["i-ghost"].port_ifindex is None
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, done.stderr
    loose = next(w for w in warnings if "i-loose" in w)
    assert "record i-loose carries user-data and is bound to its MAC, not to a port" in loose
    assert ("a guest on bridge br0 that sends from MAC 52:54:00:00:00:02 and IP 10.0.0.2 "
            "reads them") in loose
    assert "instance bind" in loose and "clean-traffic" in loose
    ghost = next(w for w in warnings if "i-ghost" in w)
    assert "no link named 'tmd-no-such0'" in ghost and "parked" in ghost


def test_cli_import_of_a_bomb_exits_2_with_one_clear_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    done = run_cli(["instance", "import", str(bomb), "--store", str(tmp_path / "i.db")])
    assert done.returncode == 2
    assert "line 1: invalid YAML: YAML anchor &a refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_import_of_many_loose_records_says_each_kind_of_warning_once(tmp_path):
    """Issue 26: thousands of unbound records with secrets are one line per kind, with
    the count and the first few ids, not a line per record."""
    path = str(tmp_path / "i.db")
    records = [{"instance_id": f"i-{n:03d}", "mac": f"52:54:00:00:01:{n:02x}",
                "user_data": "#cloud-config\n"} for n in range(40)]
    records.append({"instance_id": "i-iam", "mac": "52:54:00:00:02:01",
                    "iam": {"role": "r", "access_key_id": "AKIA", "secret_access_key": "s",
                            "token": "t", "expiration": "2030-01-01T00:00:00Z"}})
    done = run_cli(["instance", "import", "-", "--store", path], stdin=json.dumps(records))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, warnings
    bulk = next(w for w in warnings if "user-data" in w)
    assert "40 records carry user-data" in bulk and "i-000, i-001" in bulk
    assert "and 35 more" in bulk and "i-039" not in bulk and "instance bind" in bulk
    assert any("record i-iam carries IAM credentials" in w for w in warnings)


def run_cli(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", *argv], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=60)
