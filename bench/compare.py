"""Side-by-side measurements: the Python replication 0.9.10 server (from
the upstream venv, as deployed) and replication-server, same scenarios,
same machine, same run. Called by bench/compare.sh."""
import datetime
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "target", "release", "replication-server")
LOADGEN = os.path.join(ROOT, "target", "release", "replication-loadgen")
PYTHON_SERVER = os.path.join(ROOT, ".venv", "upstream", "bin", "python")
QUICK = "--quick" in sys.argv
REPEATS = 1 if QUICK else 3
SECONDS = "2" if QUICK else "5"

# Only ours persists: this row runs ours alone, saving all the time.
SAVING = "relay while a 500 MB session is saved back to back, 10 clients at 1,000/s: p99 (ms)"
SAVE_INTERVAL = {SAVING: "1"}

# (name, loadgen arguments, the metric compared, higher is better, target,
#  whether the trivial libzmq fan-out can run it)
SCENARIOS = [
    ("relay saturation, 10 clients (deliveries/s)", ["--scenario", "saturate", "--clients", "10"],
     "deliveries_per_s", True, ">= 300k", True),
    ("relay saturation, 30 clients (deliveries/s)", ["--scenario", "saturate", "--clients", "30"],
     "deliveries_per_s", True, ">= 300k", True),
    ("relay saturation, 10 clients, 100-byte updates (deliveries/s)",
     ["--scenario", "saturate", "--clients", "10", "--payload", "100"], "deliveries_per_s", True, "", True),
    ("30 clients, 1,000 updates/s: p50 (ms)", ["--scenario", "rate", "--clients", "30", "--rate", "1000"],
     "p50_ms", False, "<= 0.5", True),
    ("30 clients, 1,000 updates/s: p99 (ms)", ["--scenario", "rate", "--clients", "30", "--rate", "1000"],
     "p99_ms", False, "<= 2", True),
    ("10 clients, 1,000 updates/s: p99 (ms)", ["--scenario", "rate", "--clients", "10", "--rate", "1000"],
     "p99_ms", False, "<= 1", True),
    ("metadata fan-out saturation, 30 clients (deliveries/s)", ["--scenario", "metadata", "--clients", "30"],
     "deliveries_per_s", True, ">= 300k", False),
    ("join of 10,000 nodes, one GET at a time (s)", ["--scenario", "join", "--nodes", "10000"],
     "join_s", False, "<= 1.5", True),
    ("join: server time per GET, p99 (us, bucket bound)", ["--scenario", "join", "--nodes", "10000"],
     "server_get_p99_us", False, "<= 50", False),
    ("peak memory holding 10,000 nodes of 2 KB (MB)", ["--scenario", "join", "--nodes", "10000"],
     "server_peak_rss_mb", False, "<= 50", False),
    ("slow reader, 10 clients at 1,000/s: other readers' p99 (ms)",
     ["--scenario", "slow-reader", "--clients", "10", "--rate", "1000"], "p99_ms", False, "<= 1", False),
    ("slow reader: server peak memory (MB)", ["--scenario", "slow-reader", "--clients", "10", "--rate", "1000"],
     "server_peak_rss_mb", False, "bounded", False),
    ("200 logins/logouts during 1,000 updates/s: updates lost", ["--scenario", "churn", "--clients", "10",
     "--rate", "1000"], "lost", False, "0", False),
    (SAVING, ["--scenario", "rate", "--clients", "10", "--rate", "1000", "--init-nodes", "500", "--init-bytes",
     "1000000"], "p99_ms", False, "<= 5", False),
]


def free_port():
    """A base with base..base+3 free (three ZeroMQ ports and our admin
    endpoint), below Linux's ephemeral range so that none of the loadgen's
    own connections takes one of them meanwhile."""
    while True:
        base = random.randrange(20000, 32764, 4)
        s = [socket.socket() for _ in range(4)]
        try:
            for i, x in enumerate(s):
                x.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for x in s:
                x.close()


def start(kind, port, workdir, save_interval=None):
    env = {**os.environ, "PORT": str(port), "ADMIN_PASSWORD": "admin", "DATA_DIR": os.path.join(workdir, "data"),
           "BIND_ADDRESS": "127.0.0.1", "LOG_LEVEL": "WARNING", "TIMEOUT": "10000"}
    if save_interval:
        env["SAVE_INTERVAL"] = save_interval
    env.pop("SERVER_PASSWORD", None)
    if kind == "python":
        cmd = [PYTHON_SERVER, "-m", "replication.server", "-p", str(port), "-t", "10000", "-apwd", "admin",
               "-l", "WARNING", "-lf", os.path.join(workdir, "python.log")]
        # Its shell exits on end of input: keep stdin open.
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    else:
        env["ADMIN_ADDR"] = f"127.0.0.1:{port + 3}"
        proc = subprocess.Popen([OURS], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    # The protocol's answer only: the Python server has no admin endpoint.
    health_env = {**os.environ, "ADMIN_ADDR": ""}
    while subprocess.run([OURS, "-p", str(port), "health"], env=health_env, capture_output=True).returncode != 0:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.1)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_get_p99_us(port):
    """The p99 of our server's own time per Snapshot request, as the upper
    bound of its histogram bucket (from /metrics)."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        text = opener.open(f"http://127.0.0.1:{port + 3}/metrics", timeout=10).read().decode()
    except Exception:
        return None
    buckets = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "replication_snapshot_request_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= 0.99 * total:
            return bound * 1e6
    return None


def measure(kind, args, save_interval=None):
    if kind == "ceiling":
        # No server: the loadgen's own trivial fan-out, same arguments.
        scenario = args[args.index("--scenario") + 1]
        at = args.index("--scenario")
        rest = args[:at] + args[at + 2:]
        # A join is round trips: its floor is a trivial echo; relays: a trivial fan-out.
        trivial = "echo-ceiling" if scenario == "join" else "ceiling"
        assert scenario in ("saturate", "rate", "join")
        out = subprocess.run([LOADGEN, "--port", str(free_port()), "--seconds", SECONDS, "--json", "--scenario",
                              trivial, *rest], capture_output=True, text=True, timeout=300)
        return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()}
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        proc = start(kind, port, workdir, save_interval)
        try:
            out = subprocess.run([LOADGEN, "--port", str(port), "--seconds", SECONDS, "--server-pid", str(proc.pid),
                                  "--json", *args], capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                return {"error": out.stderr.strip()}
            result = json.loads(out.stdout)
            if kind == "ours":
                result["server_get_p99_us"] = server_get_p99_us(port)
            return result
        finally:
            stop(proc)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    rows = []
    cache = {}
    for name, args, metric, higher, target, has_ceiling in SCENARIOS:
        result = {"ceiling": None, "python": None, "python_errors": []}
        if name in SAVE_INTERVAL:
            kinds = ("ours",)
        else:
            kinds = ("python", "ours", "ceiling") if has_ceiling else ("python", "ours")
        for kind in kinds:
            key = (kind, tuple(args), name in SAVE_INTERVAL)
            if key not in cache:
                cache[key] = [measure(kind, args, SAVE_INTERVAL.get(name)) for _ in range(REPEATS)]
            runs = cache[key]
            result[kind] = median([r.get(metric) for r in runs])
            result[kind + "_lost"] = sum(r.get("lost", 0) or 0 for r in runs)
            result[kind + "_errors"] = [r["error"] for r in runs if "error" in r]
            if kind == "ours":
                result["stall"] = median([(r.get("probe") or {}).get("max_ms") for r in runs])
        py, ours = result["python"], result["ours"]
        if metric == "lost":
            ratio = None
        elif py and ours:
            ratio = (ours / py) if higher else (py / ours)
        else:
            ratio = None
        rows.append((name, py, ours, ratio, result, target))
        print(f"{name}: python {py} | ours {ours} | {('%.1fx' % ratio) if ratio else '-'}", flush=True)
    date = datetime.date.today().isoformat()
    lines = [
        f"# Python server vs replication-server, {date}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}. "
        f"Each cell is the median of {REPEATS} run(s) of {SECONDS} s; the ratio says how many times better ours is.",
        "",
        "The trivial libzmq column is the same loadgen driving a trivial libzmq server with a ZeroMQ context of "
        "its own (for relays one ROUTER forwarding every message to every other peer, no decoding; for the join "
        "an echo answering each request with 2 KB): the ceiling of this machine and load generator, since both "
        "share its cores.",
        "",
        "The last column is what an idle thread of the load generator saw during ours' runs of the row: the "
        "longest gap between two of its 1 ms sleeps (median over the runs). A latency near that figure is the "
        "machine's stall, not the server's.",
        "",
        "| measurement | Python server | replication-server | ratio | trivial libzmq fan-out | target "
        "| machine stall, longest (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, py, ours, ratio, result, target in rows:
        fmt = lambda v: "-" if v is None else (f"{v:,.0f}" if v >= 100 or v == int(v) else f"{v:.3f}")
        lines.append(f"| {name} | {fmt(py)} | {fmt(ours)} | {('%.1fx' % ratio) if ratio else '-'} | "
                     f"{fmt(result['ceiling'])} | {target} | {fmt(result.get('stall'))} |")
    lines.append("")
    errors = [(n, r) for n, _, _, _, r, _ in rows if r["python_errors"] or r["ours_errors"]]
    for n, r in errors:
        lines.append(f"- {n}: python errors {r['python_errors'][:1]}, ours errors {r['ours_errors'][:1]}")
    lines.append("Reproduce: `bench/compare.sh`.")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", f"{date}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
