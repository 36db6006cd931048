#!/usr/bin/env python3
"""Interleaved A/B of whole `kiln run` processes: for each of N rounds, runs the workflow once
with each binary in turn, so that the machine's drift (another process, the page cache, CPU
frequency) falls on all of them alike. Differences under ~1 ms need this; `whole-process.sh`
runs a scenario's repetitions back to back, where one binary's pass can meet a busier machine
than the other's.

usage: benches/interleave.py ROUNDS WORKFLOW [ENV=V,...@]KILN_BIN...

Run it in a workspace `whole-process.sh` made (KILN_BENCH_DIR), for example:
    cd /tmp/kiln-bench.XXXXXX
    python3 .../benches/interleave.py 100 workflows/chain5.yaml /tmp/a/kiln /tmp/b/kiln
Each binary needs its own `kiln-supervise` beside it for `spawn5`. Prints, for each binary, the
median and quartiles of the wall time (the time to start a process from Python included, the
same for all) and the load average before and after.
"""
import os
import statistics
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, workflow, specs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    runs = []
    for spec in specs:
        env = dict(os.environ)
        binary = spec
        if "@" in spec:
            assignments, binary = spec.split("@", 1)
            for kv in assignments.split(","):
                key, value = kv.split("=", 1)
                env[key] = value
        runs.append((spec, binary, env))
    times = {spec: [] for spec, _, _ in runs}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for spec, binary, env in runs:
            start = time.perf_counter_ns()
            done = subprocess.run(
                [binary, "run", workflow], stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env)
            times[spec].append((time.perf_counter_ns() - start) / 1e6)
            if done.returncode != 0:
                sys.exit(f"{spec}: kiln run failed ({done.returncode}): "
                         f"{done.stderr.decode(errors='replace')[-2000:]}")
    for spec, _, _ in runs:
        t = sorted(times[spec])
        print(f"{spec}: median {statistics.median(t):.2f} ms, "
              f"p25 {t[len(t) // 4]:.2f}, p75 {t[3 * len(t) // 4]:.2f} ({rounds} runs)")
    print(f"load1 {load_before:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
