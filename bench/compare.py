"""Side-by-side measurements: the Python replication 0.9.10 server (from
the upstream venv, as deployed) and replication-server, same scenarios,
same machine, same run. Called by bench/compare.sh."""
import datetime
import json
import os
import platform
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

# (name, loadgen arguments, the metric compared, higher is better)
SCENARIOS = [
    ("relay saturation, 10 clients (deliveries/s)", ["--scenario", "saturate", "--clients", "10"], "deliveries_per_s", True),
    ("relay saturation, 30 clients (deliveries/s)", ["--scenario", "saturate", "--clients", "30"], "deliveries_per_s", True),
    ("30 clients, 1,000 updates/s: p50 (ms)", ["--scenario", "rate", "--clients", "30", "--rate", "1000"], "p50_ms", False),
    ("30 clients, 1,000 updates/s: p99 (ms)", ["--scenario", "rate", "--clients", "30", "--rate", "1000"], "p99_ms", False),
    ("10 clients, 1,000 updates/s: p99 (ms)", ["--scenario", "rate", "--clients", "10", "--rate", "1000"], "p99_ms", False),
    ("metadata fan-out saturation, 30 clients (deliveries/s)", ["--scenario", "metadata", "--clients", "30"], "deliveries_per_s", True),
    ("join of 10,000 nodes, one GET at a time (s)", ["--scenario", "join", "--nodes", "10000"], "join_s", False),
    ("peak memory holding 10,000 nodes of 2 KB (MB)", ["--scenario", "join", "--nodes", "10000"], "server_peak_rss_mb", False),
]


def free_port():
    while True:
        s = [socket.socket() for _ in range(4)]
        try:
            s[0].bind(("127.0.0.1", 0))
            base = s[0].getsockname()[1]
            if base > 60000:
                continue
            s[1].bind(("127.0.0.1", base + 1))
            s[2].bind(("127.0.0.1", base + 2))
            s[3].bind(("127.0.0.1", base + 3))  # our admin endpoint
            return base
        except OSError:
            continue
        finally:
            for x in s:
                x.close()


def start(kind, port, workdir):
    env = {**os.environ, "PORT": str(port), "ADMIN_PASSWORD": "admin", "DATA_DIR": os.path.join(workdir, "data"),
           "BIND_ADDRESS": "127.0.0.1", "LOG_LEVEL": "WARNING", "TIMEOUT": "10000"}
    env.pop("SERVER_PASSWORD", None)
    if kind == "python":
        cmd = [PYTHON_SERVER, "-m", "replication.server", "-p", str(port), "-t", "10000", "-apwd", "admin",
               "-l", "WARNING", "-lf", os.path.join(workdir, "python.log")]
        # Its shell exits on end of input: keep stdin open.
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    else:
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


def measure(kind, args):
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        proc = start(kind, port, workdir)
        try:
            out = subprocess.run([LOADGEN, "--port", str(port), "--seconds", SECONDS, "--server-pid", str(proc.pid),
                                  "--json", *args], capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                return {"error": out.stderr.strip()}
            return json.loads(out.stdout)
        finally:
            stop(proc)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    rows = []
    cache = {}
    for name, args, metric, higher in SCENARIOS:
        result = {}
        for kind in ("python", "ours"):
            key = (kind, tuple(args))
            if key not in cache:
                cache[key] = [measure(kind, args) for _ in range(REPEATS)]
            runs = cache[key]
            result[kind] = median([r.get(metric) for r in runs])
            result[kind + "_lost"] = sum(r.get("lost", 0) or 0 for r in runs)
            result[kind + "_errors"] = [r["error"] for r in runs if "error" in r]
        py, ours = result["python"], result["ours"]
        if py and ours:
            ratio = (ours / py) if higher else (py / ours)
        else:
            ratio = None
        rows.append((name, py, ours, ratio, result))
        print(f"{name}: python {py} | ours {ours} | {('%.1fx' % ratio) if ratio else '-'}", flush=True)
    date = datetime.date.today().isoformat()
    lines = [
        f"# Python server vs replication-server, {date}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}. "
        f"Each cell is the median of {REPEATS} run(s) of {SECONDS} s; the ratio says how many times better ours is.",
        "",
        "| measurement | Python server | replication-server | ratio |",
        "|---|---|---|---|",
    ]
    for name, py, ours, ratio, result in rows:
        fmt = lambda v: "failed" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.3f}")
        lines.append(f"| {name} | {fmt(py)} | {fmt(ours)} | {('%.1fx' % ratio) if ratio else '-'} |")
    lines.append("")
    errors = [(n, r) for n, _, _, _, r in rows if r["python_errors"] or r["ours_errors"]]
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
