"""Persistence as an admin and the artists observe it: restarts, crashes,
corrupt files, backups, export/import and migration from the Python server."""
import glob
import gzip
import hashlib
import json
import os
import pickle
import random
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, ROOT, Server, active, init_session, pump_all
from replication import porcelain
from replication.constants import STATE_ACTIVE, STATE_LOBBY, STATE_INITIAL
from replication.repository import Repository

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "legacy")


def auth_answers(server):
    return [l for l in server.logs().splitlines() if "user logged in" in l]


def test_restart_restores_active_session_and_retained_metadata(server, clients):
    alice, ids = init_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    block = alice.repo.graph.get(ids[0]).instance
    block.props["location"][2] = 9.5
    alice.commit_push(ids[0])
    tasks = json.dumps([{"title": "retopo the hand", "done": False}])
    chat = json.dumps([{"user": "bob", "text": "brb"}])
    porcelain.update_user_metadata(bob.repo, {"tasks": tasks, "chat_messages": chat, "view_matrix": [1.0]})
    assert pump_all([alice, bob], lambda: alice.session.online_users.get("bob", {}).get("metadata", {}).get("chat_messages") == chat, 5)
    expected = {i: alice.node_data(i) for i in ids}
    for c in (alice, bob):
        c.close()

    assert server.terminate() == 0
    logs = server.logs()
    assert "Session saved to disk (reason: shutdown)" in logs or "Session saved to disk (reason: user_disconnect" in logs
    meta = json.load(open(os.path.join(server.data_dir, "session_metadata.json")))
    assert meta["initialized"] is True and meta["node_count"] == len(ids)
    assert meta["format_version"] == 1 and meta["datetime"].startswith("20")
    assert glob.glob(os.path.join(server.data_dir, "backups", "snapshot_*.msgpack"))

    server.restart()
    logs = server.logs()
    banner = [l for l in logs.splitlines() if "Previous session found" in l][-1]
    assert "nodes=4" in banner and "initialized=true" in banner and "users=bob" in banner, banner
    assert "Repository automatically initialized to ACTIVE state" in logs
    carol = clients(server, "carol")
    assert carol.pump(active(carol), 10), "carol should pull the scene with nobody pressing Init"
    assert 'answer="RUNNING"' in auth_answers(server)[-1]
    assert {i: carol.node_data(i) for i in ids} == expected
    assert all(carol.repo.graph.get(i).owner == "COMMON" for i in ids)
    # Tasks and chat come back; presence keys do not.
    bob2 = clients(server, "bob")
    assert pump_all([carol, bob2], active(bob2), 10)
    assert pump_all([carol, bob2], lambda: "bob" in carol.session.online_users, 5)
    md = carol.session.online_users["bob"]["metadata"]
    assert md.get("tasks") == tasks and md.get("chat_messages") == chat
    assert "view_matrix" not in md
    # Carol had none of her own: she got the newest retained values.
    assert bob2.session.online_users["carol"]["metadata"].get("tasks") == tasks


def run_crash_cycles(make_server, clients, policy, cycles):
    server = make_server(extra_env={"JOURNAL_FSYNC": policy, "SAVE_INTERVAL": "1", "TIMEOUT": "2000"})
    rng = random.Random(42 if policy == "always" else 7)
    alice, ids = init_session(server, clients, nodes=2)
    node = ids[0]
    # A large node makes every snapshot write take a moment, so some kills
    # land in the middle of one.
    big = alice.add("big", {"pixels": os.urandom(4 * 1024 * 1024)})
    alice.commit_push(big)
    counter = 0
    for cycle in range(cycles):
        writer = alice if cycle == 0 else clients(server, f"writer{cycle}")
        reader = clients(server, f"reader{cycle}")
        assert pump_all([writer, reader], active(writer, reader), 15), f"cycle {cycle}: clients did not sync"
        seen = []  # (time, value) as the reader observed them
        block = writer.repo.graph.get(node)
        if block.instance is None:
            block.instance = writer.repo.rdp.construct(block.data)
            writer.repo.rdp.load(block.data, block.instance)
        counter = block.data["count"] if "count" in block.data else counter
        deadline = time.time() + rng.uniform(1.8, 3.0)
        while time.time() < deadline:
            counter += 1
            block.instance.props["count"] = counter
            writer.commit_push(node)
            for _ in range(3):
                reader.session.listen(timeout=2)
                writer.session.listen(timeout=0)
                d = reader.node_data(node)
                if d and d.get("count") and (not seen or seen[-1][1] != d["count"]):
                    seen.append((time.time(), d["count"]))
        killed_at = time.time()
        server.kill9()
        for c in (writer, reader):
            c.session.state  # the client finds out on its own; close it quietly
            c.close()
        must_have = [v for t, v in seen if (t < killed_at - 1.5 or policy == "always")]
        server.restart()
        check = clients(server, f"check{cycle}")
        assert check.pump(active(check), 15), f"cycle {cycle}: server did not restore"
        got = check.node_data(node).get("count", 0)
        if must_have:
            assert got >= max(must_have), f"{policy} cycle {cycle}: lost updates ({got} < {max(must_have)})"
        assert check.node_data(big) is not None
        check.close()
    return server


def test_kill9_loses_nothing_older_than_a_second_with_everysec(make_server, clients):
    server = run_crash_cycles(make_server, clients, "everysec", 11)
    assert "Previous session found" in server.logs()


def test_kill9_loses_nothing_relayed_with_always(make_server, clients):
    run_crash_cycles(make_server, clients, "always", 11)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_snapshot_falls_back_to_newest_backup(make_server, clients, damage):
    server = make_server()
    alice, ids = init_session(server, clients)
    expected = {i: alice.node_data(i) for i in ids}
    alice.close()
    server.terminate()
    snap = os.path.join(server.data_dir, "session_snapshot.msgpack")
    raw = open(snap, "rb").read()
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw = bytearray(raw)
        raw[len(raw) // 2] ^= 0xFF
        raw = bytes(raw)
    else:
        raw = b""
    open(snap, "wb").write(raw)
    server.restart()
    logs = server.logs()
    assert "is corrupt" in logs and "restoring from the newest valid backup" in logs
    assert glob.glob(snap.replace(".msgpack", ".corrupt-*")), "the corrupt file is kept aside"
    carol = clients(server, "carol")
    assert carol.pump(active(carol), 10)
    assert {i: carol.node_data(i) for i in ids} == expected


def test_garbage_journal_tail_is_dropped(make_server, clients):
    server = make_server(extra_env={"SAVE_INTERVAL": "3600"})
    alice, ids = init_session(server, clients)
    server.terminate()  # snapshot written at shutdown
    server.restart()
    alice2 = clients(server, "alice2")
    assert alice2.pump(active(alice2), 10)
    new_id = alice2.add("journaled", {"v": 1})
    alice2.commit_push(new_id)
    alice2.pump(timeout=0.5)
    expected = alice2.node_data(new_id)
    server.kill9()  # only the journal has the new node
    with open(os.path.join(server.data_dir, "journal"), "ab") as f:
        f.write(os.urandom(37))
    server.restart()
    assert "dropped a torn or corrupt tail" in server.logs()
    carol = clients(server, "carol")
    assert carol.pump(active(carol), 10)
    assert carol.node_data(new_id) == expected and expected["v"] == 1


def test_failed_save_keeps_serving_and_recovers(make_server, clients):
    server = make_server(extra_env={"SAVE_INTERVAL": "1"})
    alice, ids = init_session(server, clients)
    # Make the snapshot's temporary file impossible to create.
    blocker = os.path.join(server.data_dir, f".session_snapshot.msgpack.tmp-{server.proc.pid}")
    deadline = time.time() + 5
    while True:
        try:
            os.mkdir(blocker)
            break
        except FileExistsError:  # a save is writing that very file right now
            assert time.time() < deadline
            time.sleep(0.02)
    block = alice.repo.graph.get(ids[0]).instance
    block.props["location"][0] = 42.0
    alice.commit_push(ids[0])
    deadline = time.time() + 5
    while "Failed to save session" not in server.logs() and time.time() < deadline:
        alice.pump(timeout=0.2)
    assert "Failed to save session" in server.logs()
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10), "the server keeps serving"
    assert bob.node_data(ids[0])["location"][0] == 42.0
    os.rmdir(blocker)
    block.props["location"][0] = 43.0
    alice.commit_push(ids[0])
    before = server.logs().count("Session saved to disk (reason: auto-save)")
    deadline = time.time() + 5
    while server.logs().count("Session saved to disk (reason: auto-save)") == before and time.time() < deadline:
        pump_all([alice, bob], lambda: False, 0.2)
    assert server.logs().count("Session saved to disk (reason: auto-save)") > before


def test_unwritable_data_dir_stops_the_start_with_one_line():
    blocker = tempfile.mktemp()
    open(blocker, "w").write("a file, not a folder")
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    env["DATA_DIR"] = os.path.join(blocker, "data")
    out = subprocess.run([BIN, "-p", "1"], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert "data folder" in out.stderr and blocker in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2


def test_export_loads_in_python_and_import_restores(make_server, clients):
    server = make_server()
    alice, ids = init_session(server, clients)
    expected = {i: alice.node_data(i) for i in ids}
    dump = tempfile.mktemp(suffix=".db")
    # Read from DATA_DIR (snapshot plus journal), not from the running server.
    env = {**os.environ, "DATA_DIR": server.data_dir, "ADMIN_ADDR": ""}
    out = subprocess.run([BIN, "export", dump], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    repo = Repository()
    repo.loads(dump)
    assert {k: n.data for k, n in repo.object_store.items()} == expected
    # import refuses while that server runs, then seeds a new folder.
    out = subprocess.run([BIN, "import", dump], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "server is running" in out.stderr
    fresh = tempfile.mkdtemp()
    out = subprocess.run([BIN, "import", dump], env={**os.environ, "DATA_DIR": fresh}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    other = make_server(data_dir=fresh)
    carol = clients(other, "carol")
    assert carol.pump(active(carol), 10)
    assert {i: carol.node_data(i) for i in ids} == expected


def check_legacy_nodes(client):
    expected = json.load(open(os.path.join(FIXTURES, "expected.json")))
    assert len(client.repo.graph) == expected["node_count"]
    for uuid, want in expected["nodes"].items():
        node = client.repo.graph.get(uuid)
        assert node is not None, uuid
        assert node.dependencies == want["dependencies"]
        assert node.data.get("type_id") == want["type_id"] and node.data.get("name") == want["name"]
        assert hashlib.sha256(pickle.dumps(node.data, protocol=4)).hexdigest() == want["data_pickle_protocol4_sha256"]


def test_python_server_snapshot_is_migrated(make_server, clients):
    data_dir = tempfile.mkdtemp()
    for f in ("session_snapshot.pkl", "session_metadata.json"):
        shutil.copy(os.path.join(FIXTURES, f), data_dir)
    server = make_server(data_dir=data_dir)
    assert "imported the Python server's session_snapshot.pkl" in server.logs()
    assert "Repository automatically initialized to ACTIVE state" in server.logs()
    client = clients(server, "carol")
    assert client.pump(active(client), 10)
    check_legacy_nodes(client)
    assert os.path.exists(os.path.join(data_dir, "session_snapshot.pkl")), "the old file is kept"
    meta = json.load(open(os.path.join(data_dir, "session_metadata.json")))
    assert meta["node_count"] == 5 and meta["initialized"] is True


def test_replication_session_dump_imports(make_server, clients):
    fresh = tempfile.mkdtemp()
    out = subprocess.run([BIN, "import", os.path.join(FIXTURES, "session_dump.db")],
                         env={**os.environ, "DATA_DIR": fresh}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    server = make_server(data_dir=fresh)
    client = clients(server, "carol")
    assert client.pump(active(client), 10)
    check_legacy_nodes(client)
