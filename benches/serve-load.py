#!/usr/bin/env python3
"""Load against a running `kiln serve`: trigger a workflow over HTTP and follow each run until
it is durably `succeeded` (GET /runs/{id} answers from the database), sequentially and with N
concurrent clients. Prints one JSON line per phase.

usage: benches/serve-load.py URL[,URL...] TOKEN WORKFLOW [SECONDS] [CLIENTS]
  (benches/serve.sh starts the server and calls this; see benches/README.md). With several URLs
  (engines sharing one database: benches/engines.sh) client i talks to URL i mod n; the
  sequential phase uses the first.

Each client keeps one HTTP/1.1 connection open and follows its run with the long poll
`GET /runs/{id}?wait=60`. A run is done when its record says succeeded; a failed run stops the
benchmark. Nothing here asserts on time.
"""
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def client(base, token):
    u = urllib.parse.urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30), u.path


def request(conn, method, path, token, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    return resp.status, payload


def one_run(conn, prefix, token, workflow):
    """Trigger a run and wait until it is durably succeeded; returns its latency in seconds."""
    t0 = time.perf_counter()
    status, body = request(conn, "POST", f"{prefix}/runs", token, {"workflow": workflow})
    if status != 201:
        raise SystemExit(f"POST /runs answered {status}: {body[:300]!r}")
    run_id = json.loads(body)["id"]
    while True:
        # Long poll: answered as soon as the run has ended (its end durable), or after 60 s.
        status, body = request(conn, "GET", f"{prefix}/runs/{run_id}?wait=60", token)
        if status != 200:
            raise SystemExit(f"GET /runs/{run_id} answered {status}: {body[:300]!r}")
        run = json.loads(body)
        if run["status"] == "succeeded":
            return time.perf_counter() - t0
        if run["status"] in ("failed", "cancelled"):
            raise SystemExit(f"run {run_id} {run['status']}: {run.get('error_message')}")


def sequential(base, token, workflow, seconds):
    conn, prefix = client(base, token)
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        lat.append(one_run(conn, prefix, token, workflow))
    return lat


def concurrent(bases, token, workflow, seconds, n):
    lat, lock = [], threading.Lock()
    end = time.perf_counter() + seconds
    errors = []

    def work(base):
        try:
            conn, prefix = client(base, token)
            while time.perf_counter() < end:
                d = one_run(conn, prefix, token, workflow)
                with lock:
                    lat.append(d)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(bases[i % len(bases)],)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"a client failed: {errors[0]}")
    return lat, elapsed


def main():
    bases, token, workflow = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    lat = sequential(bases[0], token, workflow, seconds)
    q = statistics.quantiles(lat, n=100)
    print(json.dumps({"phase": "sequential", "runs": len(lat),
                      "p50_ms": round(statistics.median(lat) * 1000, 2),
                      "p99_ms": round(q[98] * 1000, 2)}), flush=True)
    lat, elapsed = concurrent(bases, token, workflow, seconds, n)
    q = statistics.quantiles(lat, n=100)
    print(json.dumps({"phase": f"{n} clients", "runs": len(lat),
                      "runs_per_s": round(len(lat) / elapsed, 1),
                      "p50_ms": round(statistics.median(lat) * 1000, 2),
                      "p99_ms": round(q[98] * 1000, 2)}), flush=True)


if __name__ == "__main__":
    main()
