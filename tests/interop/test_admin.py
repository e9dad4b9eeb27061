"""The admin side of a live server: the HTTP endpoint, the subcommands that
call it, the >> shell and structured logs."""
import json
import os
import pty
import select
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import BIN, active, free_port_base, init_session, pump_all, raw_dealer
from replication.constants import STATE_INITIAL, STATE_LOBBY
from replication.repository import Repository

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def cli(server, *args, **env_extra):
    """Runs a subcommand of the binary against `server`, as an admin would
    with `docker compose exec`."""
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_ADDR", "ADMIN_PASSWORD", "PORT", "DATA_DIR")}
    env.update({"PORT": str(server.port), "ADMIN_PASSWORD": "adminpw", "DATA_DIR": server.data_dir})
    env.update(env_extra)
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=60)


def http(port, method, path, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with NO_PROXY.open(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def admin_port(server):
    return server.port + 3


def scrape(server):
    status, body = http(admin_port(server), "GET", "/metrics")
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def users_json(server):
    out = cli(server, "users", "--json")
    assert out.returncode == 0, out.stderr
    return {u["name"]: u for u in json.loads(out.stdout)["users"]}


def test_users_kick_save_and_export_from_the_command_line(server, clients):
    alice, ids = init_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    deadline = time.time() + 10
    while time.time() < deadline:
        pump_all([alice, bob], lambda: False, 0.3)
        users = users_json(server)
        if all(u["latency_ms"] != 999 for u in users.values()):
            break
    assert set(users) == {"alice", "bob"}
    assert users["alice"]["admin"] is True and users["bob"]["admin"] is False
    assert all(0 <= u["latency_ms"] < 999 for u in users.values()), users
    table = cli(server, "users")
    assert table.returncode == 0
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert rows["alice"][1] == "yes" and rows["bob"][1] == "no" and rows["bob"][3] == "ms", table.stdout

    out = cli(server, "kick", "bob")
    assert out.returncode == 0 and "kicked bob" in out.stdout, out.stderr
    assert bob.pump(lambda: bob.exit_reason is not None, 5)
    assert bob.exit_reason == {"reason": "kicked by admin"} and bob.state == STATE_INITIAL
    assert alice.pump(lambda: set(alice.session.online_users) == {"alice"}, 5), alice.session.online_users
    assert set(users_json(server)) == {"alice"}
    out = cli(server, "kick", "nobody")
    assert out.returncode == 1 and "no user named" in out.stderr

    snapshot = os.path.join(server.data_dir, "session_snapshot.msgpack")
    backups = os.listdir(os.path.join(server.data_dir, "backups")) if os.path.isdir(
        os.path.join(server.data_dir, "backups")) else []
    out = cli(server, "save")
    assert out.returncode == 0, out.stderr
    assert f"saved {len(ids)} node(s)" in out.stdout
    assert os.path.getsize(snapshot) > 0
    assert len(os.listdir(os.path.join(server.data_dir, "backups"))) == len(backups) + 1

    dump = tempfile.mktemp(suffix=".db")
    out = cli(server, "export", dump)
    assert out.returncode == 0, out.stderr
    assert "running server" in out.stdout
    repo = Repository()
    repo.loads(dump)
    assert {k: n.data for k, n in repo.object_store.items()} == {i: alice.node_data(i) for i in ids}


def test_metrics_parse_and_follow_the_traffic(server, clients):
    alice, ids = init_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    before = scrape(server)
    assert sample(before, "replication_users_connected") == 2
    assert sample(before, "replication_nodes") == len(ids)
    assert sample(before, "replication_bytes_held") > 0
    assert sample(before, "replication_session_active") == 1

    block = alice.repo.graph.get(ids[0]).instance
    for i in range(5):
        block.props["location"][0] = 100.0 + i
        alice.commit_push(ids[0])
    assert pump_all([alice, bob], lambda: bob.node_data(ids[0])["location"][0] == 104.0, 5)
    refused = clients(server, "mallory", admin=True, admin_password="guess")
    refused.pump(lambda: refused.state == STATE_INITIAL, 3)
    stranger = raw_dealer(server.port)
    stranger.send_multipart([b"junk"])  # from a peer that never logged in
    heartbeat = raw_dealer(server.port + 2)
    heartbeat.send_multipart([b"INIT", b"extra"])  # a heartbeat is one frame
    time.sleep(0.3)
    after = scrape(server)

    def moved(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("replication_commits_applied_total") == 5
    assert moved("replication_messages_received_total", channel="data", type="Commit") == 5
    assert moved("replication_messages_sent_total", channel="data", type="Commit") == 5  # to bob only
    assert moved("replication_bytes_received_total", channel="data", type="Commit") > 0
    assert moved("replication_relay_latency_seconds_count") == 5
    assert sample(after, "replication_relay_latency_seconds_bucket", le="+Inf") == sample(
        after, "replication_relay_latency_seconds_count")
    assert moved("replication_auth_refusals_total", reason="wrong_admin_password") == 1
    assert moved("replication_messages_dropped_total", channel="command", reason="unauthenticated") == 1
    assert moved("replication_messages_dropped_total", channel="heartbeat", reason="malformed") == 1
    assert "heartbeat of 2 frames (one expected)" in server.logs()
    assert sample(after, "replication_commits_rejected_total", reason="bad_delta") == 0
    assert sample(after, "replication_up") == 1
    assert sample(after, "replication_journal_bytes") > 0
    stranger.close()
    heartbeat.close()


def block_snapshot_writes(server):
    """Makes the snapshot's temporary file impossible to create (root
    ignores permissions, so a folder takes the file's place)."""
    blocker = os.path.join(server.data_dir, f".session_snapshot.msgpack.tmp-{server.proc.pid}")
    deadline = time.time() + 5
    while True:
        try:
            os.mkdir(blocker)
            return blocker
        except FileExistsError:  # a save is writing that very file right now
            assert time.time() < deadline
            time.sleep(0.02)


def test_health_turns_503_when_saves_fail_and_back_to_200(server, clients):
    alice, ids = init_session(server, clients)
    status, body = http(admin_port(server), "GET", "/health")
    health = json.loads(body)
    assert status == 200 and health["healthy"] and health["state"] == "ACTIVE"
    assert health["users_online"] == 1 and health["nodes"] == len(ids)

    blocker = block_snapshot_writes(server)
    status, body = http(admin_port(server), "POST", "/save")
    assert status == 500 and "save failed" in json.loads(body)["error"]
    status, body = http(admin_port(server), "GET", "/health")
    health = json.loads(body)
    assert status == 503 and not health["healthy"] and health["last_save_error"]
    out = cli(server, "status")
    assert out.returncode == 1 and "UNHEALTHY" in out.stderr and "last save failed" in out.stderr
    out = cli(server, "health")
    assert out.returncode == 1 and "last save failed" in out.stderr, "the container health check sees it too"
    assert alice.pump(timeout=0.5) and alice.state != STATE_INITIAL, "clients are still served"

    os.rmdir(blocker)
    status, body = http(admin_port(server), "POST", "/save")
    assert status == 200 and json.loads(body)["nodes"] == len(ids)
    status, body = http(admin_port(server), "GET", "/health")
    health = json.loads(body)
    assert status == 200 and health["healthy"] and health["last_save_age_s"] < 5
    out = cli(server, "status")
    assert out.returncode == 0 and out.stdout.startswith("healthy: ACTIVE session, 1 user(s) online")
    out = cli(server, "health")
    assert out.returncode == 0 and "saves working" in out.stdout


def test_off_loopback_endpoint_needs_the_admin_password(make_server):
    port = free_port_base()
    server = make_server(port=port, extra_env={"ADMIN_ADDR": f"0.0.0.0:{port + 3}"})
    for path in ("/users", "/metrics", "/export"):
        assert http(port + 3, "GET", path)[0] == 401, path
        assert http(port + 3, "GET", path, token="wrong")[0] == 401, path
    assert http(port + 3, "POST", "/save", token="wrong")[0] == 401
    assert http(port + 3, "POST", "/users/alice/kick")[0] == 401
    assert http(port + 3, "GET", "/users", token="adminpw")[0] == 200
    assert http(port + 3, "GET", "/health")[0] == 200, "health checks need no token"
    out = cli(server, "users", ADMIN_ADDR=f"0.0.0.0:{port + 3}")
    assert out.returncode == 0 and "no users online" in out.stdout, out.stderr
    out = cli(server, "users", ADMIN_ADDR=f"0.0.0.0:{port + 3}", ADMIN_PASSWORD="wrong")
    assert out.returncode == 1 and "refused" in out.stderr


def test_default_password_with_a_network_endpoint_refuses_to_start():
    port = free_port_base()
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_PASSWORD", "DATA_DIR")}
    env.update({"ADMIN_ADDR": f"0.0.0.0:{port + 3}", "DATA_DIR": tempfile.mkdtemp()})
    out = subprocess.run([BIN, "-p", str(port)], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert "refusing to start" in out.stderr and "ADMIN_PASSWORD" in out.stderr


def test_commands_without_a_server(make_server, clients):
    server = make_server()
    alice, ids = init_session(server, clients)
    expected = {i: alice.node_data(i) for i in ids}
    alice.close()
    server.terminate()
    for args in (["users"], ["status"], ["save"], ["kick", "bob"]):
        out = cli(server, *args)
        assert out.returncode == 3, (args, out.stderr)
        assert "no server answers" in out.stderr
    dump = tempfile.mktemp(suffix=".db")
    out = cli(server, "export", dump)
    assert out.returncode == 0, out.stderr
    assert "no server answers" in out.stdout and "exported" in out.stdout
    repo = Repository()
    repo.loads(dump)
    assert {k: n.data for k, n in repo.object_store.items()} == expected


class Pty:
    """The server started in a terminal, read and typed into."""

    def __init__(self, port, data_dir):
        env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_ADDR", "LOG_FORMAT")}
        env.update({"ADMIN_PASSWORD": "adminpw", "DATA_DIR": data_dir, "BIND_ADDRESS": "127.0.0.1"})
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(data_dir)
            os.execve(BIN, [BIN, "-p", str(port)], env)
        self.seen = b""

    def expect(self, text, timeout=10):
        deadline = time.time() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.time()
            assert left > 0, f"{text!r} not in {self.seen.decode(errors='replace')[-2000:]}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    break
        assert text.encode() in self.seen, self.seen.decode(errors="replace")[-2000:]
        self.seen = self.seen[self.seen.index(text.encode()) + len(text):]

    def type(self, line):
        os.write(self.fd, line.encode() + b"\n")

    def wait(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    pass
        os.kill(self.pid, 9)
        raise AssertionError("the server did not stop")


def test_shell_in_a_terminal(clients):
    port = free_port_base()
    data_dir = tempfile.mkdtemp()
    term = Pty(port, data_dir)

    class Handle:
        pass

    handle = Handle()
    handle.port = port
    try:
        term.expect(">> ")
        term.type("help")
        term.expect("kick <user>")
        term.expect(">> ")
        alice = clients(handle, "alice", admin=True)
        assert alice.pump(lambda: alice.state == STATE_LOBBY, 5)
        term.type("users")
        term.expect("alice")
        term.expect(">> ")
        term.type("dance")
        term.expect('unknown command "dance"')
        term.type("kick alice")
        term.expect("kicked alice")
        assert alice.pump(lambda: alice.exit_reason is not None, 5)
        term.type("save")
        term.expect("saved 0 node(s)")
        term.type("exit")
        assert term.wait() == 0
        assert b"exit typed in the shell" in term.seen
    finally:
        try:
            os.kill(term.pid, 9)
        except ProcessLookupError:
            pass


def test_json_logs_to_stderr_and_the_log_file(make_server):
    log_file = tempfile.mktemp(suffix=".log")
    server = make_server(extra_env={"LOG_FORMAT": "json", "LOG_FILE": log_file})
    sock = raw_dealer(server.port)
    sock.send_multipart([b"junk"])
    time.sleep(0.3)
    server.terminate()
    sock.close()
    for text in (server.logs(), open(log_file).read()):
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert lines, text
        assert all({"timestamp", "level", "message"} <= set(line) for line in lines)
        start = next(line for line in lines if line["message"] == "replication server listening")
        assert start["level"] == "INFO" and start["command"] == server.port
        assert any(line["level"] == "WARN" and line["message"] == "dropped a message" for line in lines)
