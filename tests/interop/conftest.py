"""Drives the built server with the real replication 0.9.10 client library.

The server binary comes from REPLICATION_SERVER_BIN (the test command sets
it); each test gets its own server on free loopback ports.
"""
import copy
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import zmq

from replication import porcelain
from replication.constants import STATE_ACTIVE, STATE_INITIAL, STATE_LOBBY
from replication.interface import Session
from replication.protocol import DataTranslationProtocol, ReplicatedDatablock
from replication.repository import Repository

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("REPLICATION_SERVER_BIN", os.path.join(ROOT, "target", "release", "replication-server"))


def free_port_base():
    """A base port with base..base+3 free on 127.0.0.1 (the three ZeroMQ
    ports and the admin endpoint), below Linux's ephemeral range (32768 and
    up) so that no client connection takes one meanwhile."""
    for _ in range(200):
        base = random.randrange(20000, 32764, 4)
        socks = []
        try:
            for p in range(base, base + 4):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


class Server:
    """The built server in a process of its own, with its own data folder."""

    def __init__(self, extra_env=None, args=(), data_dir=None, port=None, wait=True):
        self.port = port or free_port_base()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="replication-data-")
        self.extra_env = dict(extra_env or {})
        self.args = list(args)
        self.log_path = tempfile.mktemp(prefix="replication-server-", suffix=".log")
        self.log = open(self.log_path, "ab")
        self.start(wait)

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("ADMIN_PASSWORD", "SERVER_PASSWORD", "PORT", "TIMEOUT", "DATA_DIR", "SAVE_INTERVAL",
                            "JOURNAL_FSYNC", "MAX_BACKUPS", "ADMIN_ADDR", "LOG_FORMAT")}
        env.update({"ADMIN_PASSWORD": "adminpw", "LOG_LEVEL": "DEBUG", "TIMEOUT": "3000",
                    "BIND_ADDRESS": "127.0.0.1", "DATA_DIR": self.data_dir})
        env.update(self.extra_env)
        return env

    def start(self, wait=True):
        self.proc = subprocess.Popen([BIN, "-p", str(self.port), *self.args], env=self.env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.logs()[-3000:]}")
            if porcelain.request_session_info(f"127.0.0.1:{self.port}", timeout=200):
                return
        raise RuntimeError(f"server not ready: {self.logs()[-3000:]}")

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def terminate(self):
        """SIGTERM, as docker stop and systemd send it; waits for the exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def restart(self, wait=True):
        self.start(wait)

    def stop(self):
        self.terminate()
        self.log.close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def make_server():
    servers = []

    def make(**kw):
        s = Server(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


class Block:
    """A stand-in for a Blender datablock: a name and a dict of properties."""

    def __init__(self, name, props=None):
        self.name = name
        self.props = props or {}
        self.uuid = None


class BlockImpl(ReplicatedDatablock):
    is_root = True
    use_delta = True

    @staticmethod
    def construct(data):
        return Block(data["name"])

    @staticmethod
    def dump(datablock):
        data = copy.deepcopy(datablock.props)
        data["name"] = datablock.name
        return data

    @staticmethod
    def load(data, datablock):
        datablock.props = {k: v for k, v in data.items() if k not in ("name", "type_id", "uuid")}

    @staticmethod
    def resolve(data):
        return None

    @staticmethod
    def resolve_deps(datablock):
        return []


def make_rdp():
    rdp = DataTranslationProtocol()
    rdp.register_implementation(Block, BlockImpl)
    return rdp


class Client:
    """One artist: a Session, its Repository and its blocks."""

    def __init__(self, server, name, admin=False, server_password=None, admin_password="adminpw", timeout=3000):
        self.name = name
        self.server = server
        self.repo = Repository(rdp=make_rdp(), username=name)
        porcelain.remote_add(self.repo, "origin", "127.0.0.1", server.port,
                             server_password=server_password,
                             admin_password=admin_password if admin else None)
        self.session = Session()
        self.exit_reason = None
        self.session.register("on_exit")(self._on_exit)
        self.session.register("on_connection")(lambda: None)
        self.session.connect(repository=self.repo, timeout=timeout,
                             server_password=server_password,
                             admin_password=admin_password if admin else None)

    def _on_exit(self, reason):
        self.exit_reason = reason

    @property
    def state(self):
        return self.session.state

    def pump(self, until=None, timeout=5.0):
        """Runs the client's network loop until `until()` is true."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.session.listen(timeout=10)
            if until is not None and until():
                return True
        if until is None:
            return True
        return False

    def add(self, name, props, owner=None):
        block = Block(name, props)
        node_id = porcelain.add(self.repo, block, owner=owner)
        return node_id

    def init_session(self):
        self.session.init()
        assert self.pump(lambda: self.state == STATE_ACTIVE, 10), f"init did not finish, state {self.state}"

    def commit_push(self, node_id):
        porcelain.commit(self.repo, node_id)
        porcelain.push(self.repo, "origin", node_id)

    def node_data(self, node_id):
        node = self.repo.graph.get(node_id)
        return None if node is None else node.data

    def close(self):
        if self.session.state != STATE_INITIAL:
            self.session.disconnect(reason="test over")


@pytest.fixture
def clients():
    made = []

    def make(server, name, **kw):
        c = Client(server, name, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def active(*cs):
    return lambda: all(c.state == STATE_ACTIVE for c in cs)


def init_session(server, clients, nodes=4, name="alice"):
    alice = clients(server, name, admin=True)
    assert alice.pump(lambda: alice.state == STATE_LOBBY, 5), alice.exit_reason
    ids = [alice.add(f"obj{i}", {"location": [float(i), 1.0, 2.0], "layers": (1, 2), "blob": bytes([i]) * 16})
           for i in range(nodes)]
    alice.init_session()
    return alice, ids


def pump_all(clients, until, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for c in clients:
            if c.session.state != STATE_INITIAL:
                c.session.listen(timeout=5)
        if until():
            return True
    return False


def raw_dealer(port, identity=None):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, identity or uuid.uuid4().bytes)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s
