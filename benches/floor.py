#!/usr/bin/env python3
"""What a whole `kiln run` of `chain5` cannot go below on this machine, measured piece by piece
beside the run itself, interleaved (each round times every piece once, so the machine's drift
falls on all of them alike).

usage: benches/floor.py [ROUNDS]        (default 40; from a workspace whole-process.sh made)

Run it in a workspace `whole-process.sh` made (KILN_BENCH_DIR), with KILN_BIN naming the same
binary (default: target/release/kiln of this repository):
    KILN_BENCH_DIR=/tmp/kb benches/whole-process.sh chain5 && cd /tmp/kb && .../benches/floor.py

The pieces, each timed as a whole process from Python unless said otherwise:
  exec        /bin/true: starting and ending any process
  start       `kiln --version`: starting and ending a binary of kiln's size (loader, relocations,
              page faults of the code it touches, the runtime's set-up)
  validate    `kiln validate workflows/chain5.yaml`: start, parse and check the workflow, set up
              the plugin engine and load the plugin from its compiled cache (no database)
  durable     durable SQLite alone, timed inside one Python process (its own start excluded):
              open a copy of the workspace's database as kiln does (WAL, synchronous=FULL),
              commit a run's creation, commit its end, close (the log folded into the file
              and removed). The fewest commits a run can have, each with its fsyncs.
  chain5      `kiln run workflows/chain5.yaml`

Prints each piece's median and quartiles, and `validate + durable`: a process that starts,
loads its plugin and records a run durably without running a step. Python's `sqlite3` is the
system's SQLite, not the one bundled in kiln; both issue the same fsyncs.
"""
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv, env):
    start = time.perf_counter_ns()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}): "
                 f"{done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def durable(path):
    """Open, two durable commits, close: as a run's creation and end, in milliseconds."""
    start = time.perf_counter_ns()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    run_id = str(uuid.uuid4())
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO runs (id, workflow_name, workflow_file, workflow_yaml, status, params_json, "
        "created_by, created_at) VALUES (?, 'floor', 'floor.yaml', '', 'running', '{}', "
        "'floor', '2026-01-01T00:00:00Z')", (run_id,))
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE runs SET status = 'succeeded' WHERE id = ?", (run_id,))
    conn.execute("COMMIT")
    conn.close()
    return (time.perf_counter_ns() - start) / 1e6


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    kiln = os.environ.get("KILN_BIN", os.path.join(REPO, "target", "release", "kiln"))
    if not os.path.isfile(os.path.join(".kiln", "kiln.db")):
        sys.exit(__doc__)
    # As whole-process.sh runs kiln: the workspace's own database, plugins and compiled cache.
    env = dict(os.environ, KILN_WORKSPACE=os.getcwd(),
               KILN_CACHE_DIR=os.path.join(os.getcwd(), ".kiln", "cache"))
    for key in ("KILN_DATABASE_URL", "KILN_PLUGINS_DIR", "KILN_LOG"):
        env.pop(key, None)
    scratch = tempfile.mkdtemp(prefix="kiln-floor.")
    copy = os.path.join(scratch, "kiln.db")
    shutil.copyfile(os.path.join(".kiln", "kiln.db"), copy)
    pieces = {
        "exec": lambda: timed(["/bin/true"], env),
        "start": lambda: timed([kiln, "--version"], env),
        "validate": lambda: timed([kiln, "validate", "workflows/chain5.yaml"], env),
        "durable": lambda: durable(copy),
        "chain5": lambda: timed([kiln, "run", "workflows/chain5.yaml"], env),
    }
    times = {name: [] for name in pieces}
    load_before = os.getloadavg()[0]
    try:
        for name, piece in pieces.items():  # a warm-up round
            piece()
        for _ in range(rounds):
            for name, piece in pieces.items():
                times[name].append(piece())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {}
    for name, t in times.items():
        t.sort()
        medians[name] = statistics.median(t)
        print(f"{name:9} median {medians[name]:6.2f} ms, p25 {t[len(t) // 4]:6.2f}, "
              f"p75 {t[3 * len(t) // 4]:6.2f}")
    floor = medians["validate"] + medians["durable"]
    print(f"validate + durable: {floor:.2f} ms, against chain5 {medians['chain5']:.2f} ms "
          f"({rounds} rounds; load1 {load_before:.2f} -> {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
