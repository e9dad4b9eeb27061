"""The deployment kit, proven without a Docker engine: the image's start-up
replayed on the host, the compose file and .env.example against the
binary's settings, the scripts, and the quick reference's commands."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
from conftest import BIN, Client, free_port_base  # noqa: E402
from replication.constants import STATE_ACTIVE, STATE_LOBBY  # noqa: E402


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def dockerfile_env():
    """The ENV values of the runtime stage."""
    text = read("Dockerfile").replace("\\\n", " ")
    runtime = text.split("FROM debian", 1)[1]
    env = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S*)", line[4:]):
                env[key] = value
    return env


def env_example():
    values = {}
    for line in read(".env.example").splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            values[k] = v
    return values


def binary_variables():
    """Every environment variable the binary reads, from its --help."""
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: (\w+)", out))


class Struct:
    pass


def test_started_as_the_image_starts_it(tmp_path):
    port = free_port_base()
    env = {"PATH": os.path.dirname(BIN) + os.pathsep + os.environ["PATH"], "HOME": str(tmp_path)}
    env.update(dockerfile_env())
    assert env["SERVER_PASSWORD"] == "", "the image's default is a public session"
    assert env["ADMIN_ADDR"].startswith("127.0.0.1:"), "the image's admin endpoint stays inside the container"
    env.update({"DATA_DIR": str(tmp_path / "data"), "PORT": str(port), "ADMIN_PASSWORD": "adminpw",
                "BIND_ADDRESS": "127.0.0.1", "ADMIN_ADDR": f"127.0.0.1:{port + 3}"})
    proc = subprocess.Popen([os.path.join(ROOT, "docker", "entrypoint.sh")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while subprocess.run([BIN, "health"], env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "never healthy"
        health = subprocess.run([BIN, "health"], env=env, capture_output=True, text=True)
        assert health.returncode == 0 and "public" in health.stdout and "saves working" in health.stdout
        server = Struct()
        server.port = port
        alice = Client(server, "alice", admin=True)
        assert alice.pump(lambda: alice.state == STATE_LOBBY, 5), alice.exit_reason
        node = alice.add("Cube", {"location": [1.0, 2.0, 3.0]})
        alice.init_session()
        alice.repo.graph.get(node).instance.props["location"][0] = 5.0
        alice.commit_push(node)
        alice.pump(timeout=0.5)
        alice.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode()
    assert "Session saved to disk (reason: shutdown)" in log or "Session saved to disk (reason: user_disconnect:alice)" in log, log
    assert (tmp_path / "data" / "session_snapshot.msgpack").stat().st_size > 0
    meta = (tmp_path / "data" / "session_metadata.json").read_text()
    assert '"node_count": 1' in meta and '"initialized": true' in meta


def test_compose_file_matches_the_server():
    compose = yaml.safe_load(read("docker-compose.yml"))
    service = compose["services"]["blender-collab-server"]
    assert service["container_name"] == "blender-multiuser-server"
    assert service["restart"] == "unless-stopped"
    assert "5555-5557:5555-5557" in service["ports"]
    assert "./data:/app/data" in service["volumes"] and "./logs:/app/logs" in service["volumes"]
    grace = service["stop_grace_period"]
    assert int(grace.rstrip("s")) >= 30
    env = service["environment"]
    example = env_example()
    assert set(env) == binary_variables(), "compose must set every variable the server reads"
    for key, value in env.items():
        if key in ("PORT", "DATA_DIR"):
            continue  # fixed inside the container: the ports and the volume above
        assert value == "${%s:-%s}" % (key, example[key]), f"{key}: {value!r}"
    assert env["DATA_DIR"] == "/app/data" and env["PORT"] == "5555"
    docker_env = dockerfile_env()
    assert set(docker_env) == binary_variables()
    assert docker_env["DATA_DIR"] == "/app/data"
    for key in ("PORT", "ADMIN_PASSWORD", "LOG_LEVEL", "TIMEOUT", "SAVE_INTERVAL", "MAX_BACKUPS"):
        assert docker_env[key] == example[key]
    text = read("Dockerfile")
    assert "EXPOSE 5555 5556 5557" in text and "VOLUME /app/data" in text
    assert re.search(r"^USER (?!root)", text, re.M), "the image runs as a non-root user"
    assert 'HEALTHCHECK' in text and '"replication-server", "health"' in text


def test_every_variable_is_documented():
    variables = binary_variables()
    assert {"PORT", "ADMIN_PASSWORD", "SERVER_PASSWORD", "LOG_LEVEL", "TIMEOUT", "DATA_DIR", "SAVE_INTERVAL",
            "MAX_BACKUPS", "JOURNAL_FSYNC"} <= variables
    assert set(env_example()) == variables
    readme, quick = read("README.md"), read("QUICK_REFERENCE.md")
    for var in variables:
        assert f"`{var}`" in readme, f"{var} missing from the README's table"
        assert f"`{var}`" in quick, f"{var} missing from QUICK_REFERENCE.md"


def test_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (.ci/run installs it)")
        pytest.skip("shellcheck is not installed here (apt-get install shellcheck)")
    scripts = ["prepare.sh", "deploy.sh", "docker/entrypoint.sh", "scripts/test.sh", "scripts/setup-venvs.sh", ".ci/run",
               "bench/compare.sh"]
    out = subprocess.run(["shellcheck", *[os.path.join(ROOT, s) for s in scripts]], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_prepare_creates_a_valid_env_and_is_idempotent(tmp_path):
    for name in ("prepare.sh", "docker-compose.yml", ".env.example"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    out = subprocess.run(["bash", str(tmp_path / "prepare.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    env = dict(l.split("=", 1) for l in (tmp_path / ".env").read_text().splitlines() if l and not l.startswith("#"))
    assert set(env) == set(env_example())
    assert env["ADMIN_PASSWORD"] != "admin" and len(env["ADMIN_PASSWORD"]) == 24
    assert (tmp_path / "data").is_dir() and (tmp_path / "logs").is_dir()
    first = (tmp_path / ".env").read_text()
    out = subprocess.run(["bash", str(tmp_path / "prepare.sh")], capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / ".env").read_text() == first
    # The binary accepts what prepare.sh wrote.
    port = free_port_base()
    check = subprocess.run([BIN, "-p", str(port), "health"], cwd=tmp_path, capture_output=True, text=True)
    assert "invalid" not in check.stderr
    # Outside the project folder it says so.
    lonely = tmp_path / "elsewhere"
    lonely.mkdir()
    shutil.copy(os.path.join(ROOT, "prepare.sh"), lonely / "prepare.sh")
    out = subprocess.run(["bash", str(lonely / "prepare.sh")], capture_output=True, text=True)
    assert out.returncode != 0 and "run me from the replication-server folder" in out.stderr


def quick_reference_blocks():
    text = read("QUICK_REFERENCE.md")
    blocks = [b.split("```", 1)[0] for b in text.split("```sh")[1:]]
    return [[l.split("#", 1)[0].strip() for l in b.splitlines() if l.strip()] for b in blocks]


def wait_healthy(env, proc=None, timeout=60):
    deadline = time.time() + timeout
    while subprocess.run([BIN, "health"], env=env, capture_output=True).returncode != 0:
        assert proc is None or proc.poll() is None, "the server exited"
        assert time.time() < deadline, "never healthy"
        time.sleep(0.1)


def test_quick_reference_commands_run(tmp_path):
    """Every command of QUICK_REFERENCE.md that needs no Docker, for real."""
    running, stopped, source, docker = quick_reference_blocks()
    assert all(c.startswith("replication-server") for c in running + stopped)
    assert all(c.startswith(("docker", "./deploy.sh")) for c in docker)
    port = free_port_base()
    env = {**os.environ, "PORT": str(port), "DATA_DIR": str(tmp_path / "data"), "BIND_ADDRESS": "127.0.0.1"}
    server = subprocess.Popen([BIN], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(env, server)
        for command in running:
            out = subprocess.run([BIN, *command.split()[1:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, f"{command}: {out.stderr}"
        assert (tmp_path / "session.db").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    for command in stopped:
        out = subprocess.run([BIN, *command.split()[1:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{command}: {out.stderr}"
    # `scripts/test.sh` is this suite; `./prepare.sh` has its own test above.
    assert source == ["cargo run --release", "scripts/test.sh", "./prepare.sh"]
    manifest = os.path.join(ROOT, "Cargo.toml")
    run = subprocess.Popen(["cargo", "run", "--release", "--quiet", "--manifest-path", manifest],
                           env={**env, "DATA_DIR": ""}, cwd=tmp_path / "data",
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(env, run, timeout=300)
        assert (tmp_path / "data" / "data" / "session_snapshot.msgpack").exists() or \
            (tmp_path / "data" / "data").is_dir(), "the default data folder is ./data"
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(60)
