"""The protocol as the real replication 0.9.10 client observes it."""
import json
import os
import random
import time

import pytest
import zmq

import replication.interface
from conftest import Block, Client, active, pump_all, raw_dealer
from replication import porcelain
from replication.constants import STATE_ACTIVE, STATE_INITIAL, STATE_LOBBY, RP_COMMON
from replication.objects import Kick, Node, Delete, RequestServerInfo


def start_session(server, clients, nodes=3):
    """alice (admin) initialises a session of `nodes` blocks."""
    alice = clients(server, "alice", admin=True)
    assert alice.pump(lambda: alice.state == STATE_LOBBY, 5), alice.exit_reason
    ids = [alice.add(f"cube{i}", {"location": [float(i), 0.5, -1.25], "layers": (1, 2), "raw": bytes([i]) * 8,
                                  "count": i, "flags": [True, False], "empty": {}, "none": None})
           for i in range(nodes)]
    alice.init_session()
    return alice, ids


def test_server_info_public_and_private(make_server):
    public = make_server()
    assert porcelain.request_session_info(f"127.0.0.1:{public.port}", 1000) == {"private": False, "version": "0.9.10"}
    private = make_server(extra_env={"SERVER_PASSWORD": "s3cret"})
    assert porcelain.request_session_info(f"127.0.0.1:{private.port}", 1000) == {"private": True, "version": "0.9.10"}


@pytest.mark.parametrize("password", ["", None])
def test_public_server_accepts_empty_and_none_password(server, clients, password):
    c = clients(server, "alice", server_password=password)
    assert c.pump(lambda: c.state == STATE_LOBBY, 5), c.exit_reason


def refused(c):
    assert c.pump(lambda: c.state == STATE_INITIAL, 5), f"not refused, state {c.state}"
    return c.exit_reason


def test_refusal_already_logged_in(server, clients):
    a = clients(server, "alice")
    assert a.pump(lambda: a.state == STATE_LOBBY, 5)
    b = clients(server, "alice")
    assert "FAILED: client already logged in" in refused(b)
    assert a.state == STATE_LOBBY


def test_refusal_wrong_admin_password(server, clients):
    c = clients(server, "alice", admin=True, admin_password="wrong")
    assert "FAILED: wrong admin password" in refused(c)


def test_refusal_wrong_server_password(make_server, clients):
    s = make_server(extra_env={"SERVER_PASSWORD": "s3cret"})
    assert "FAILED: wrong server password" in refused(clients(s, "alice", server_password="nope"))
    assert "FAILED: wrong server password" in refused(clients(s, "bob", server_password=None))
    ok = clients(s, "carol", server_password="s3cret")
    assert ok.pump(lambda: ok.state == STATE_LOBBY, 5), ok.exit_reason


def test_refusal_wrong_version(server, clients, monkeypatch):
    monkeypatch.setattr(replication.interface, "__version__", "0.9.9")
    c = clients(server, "alice")
    assert "FAILED: wrong client version (0.9.9 != 0.9.10)" in refused(c)


def test_init_then_second_client_pulls_every_node(server, clients):
    alice, ids = start_session(server, clients, nodes=25)
    bob = clients(server, "bob")
    assert bob.pump(lambda: bob.state == STATE_ACTIVE, 10)
    for i in ids:
        assert bob.node_data(i) == alice.node_data(i)
        assert type(bob.node_data(i)["layers"]) is tuple
        assert bob.repo.graph.get(i).owner == alice.repo.graph.get(i).owner
    assert len(bob.repo.graph) == 25
    users = bob.session.online_users
    assert set(users) == {"alice", "bob"}
    assert users["alice"]["admin"] is True and users["bob"]["admin"] is False


def test_lobby_client_gets_catalog_when_init_ends(server, clients):
    alice = clients(server, "alice", admin=True)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], lambda: alice.state == STATE_LOBBY and bob.state == STATE_LOBBY, 5)
    ids = [alice.add(f"b{i}", {"v": i}) for i in range(5)]
    alice.session.init()
    assert pump_all([alice, bob], active(alice, bob), 10), (alice.state, bob.state)
    assert {i: bob.node_data(i) for i in ids} == {i: alice.node_data(i) for i in ids}


def test_second_init_is_rejected(server, clients):
    alice, ids = start_session(server, clients)
    other = clients(server, "root", admin=True)
    assert other.pump(lambda: other.state == STATE_ACTIVE, 10)
    other.add("intruder", {"v": 1})
    other.session.request_server_repository_init()
    # REJECTED puts the client back in the lobby; the session is untouched.
    assert other.pump(lambda: other.state == STATE_LOBBY, 5)
    carol = clients(server, "carol")
    assert carol.pump(lambda: carol.state == STATE_ACTIVE, 10)
    assert sorted(carol.repo.graph.keys()) == sorted(ids)


def test_node_update_relayed_to_others_not_echoed(server, clients):
    alice, ids = start_session(server, clients)
    bob = clients(server, "bob")
    assert bob.pump(active(bob), 10)
    new_id = alice.add("sphere", {"radius": 2.0, "segments": 32})
    alice.commit_push(new_id)
    assert bob.pump(lambda: bob.node_data(new_id) is not None, 5)
    assert bob.node_data(new_id) == alice.node_data(new_id)

    echoed = []
    original = alice.repo.do_commit
    alice.repo.do_commit = lambda update, *a, **k: (echoed.append(update), original(update, *a, **k))
    # A Commit (delta) is relayed too.
    alice.repo.graph.get(new_id).instance.props["radius"] = 3.5
    alice.commit_push(new_id)
    assert bob.pump(lambda: bob.node_data(new_id)["radius"] == 3.5, 5)
    alice.pump(timeout=0.5)
    assert echoed == [], "the sender got its own update back"

    # A late joiner gets the node as last pushed in full.
    carol = clients(server, "carol")
    assert carol.pump(active(carol), 10)
    assert carol.node_data(new_id)["segments"] == 32


def test_metadata_reaches_others_with_tasks_and_chat(server, clients):
    alice, _ = start_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    assert pump_all([alice, bob], lambda: "bob" in alice.session.online_users, 5)
    tasks = json.dumps([{"id": 1, "title": "rig the arm", "done": False}])
    chat = json.dumps([{"user": "bob", "text": "hi 👋"}])
    porcelain.update_user_metadata(bob.repo, {"tasks": tasks, "chat_messages": chat, "frame_current": 42})
    def seen():
        md = alice.session.online_users.get("bob", {}).get("metadata", {})
        return md.get("tasks") == tasks and md.get("chat_messages") == chat and md.get("frame_current") == 42
    assert pump_all([alice, bob], seen, 5)
    # A later UpdateClientsState carries the merged metadata to newcomers.
    carol = clients(server, "carol")
    assert pump_all([alice, bob, carol], lambda: carol.session.online_users.get("bob", {}).get("metadata", {}).get("tasks") == tasks, 10)


def test_right_and_delete_reach_everyone_and_late_joiners(server, clients):
    alice, ids = start_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    porcelain.lock(bob.repo, [ids[0]], affect_dependencies=False)
    assert pump_all([alice, bob], lambda: alice.repo.graph.get(ids[0]).owner == "bob" and bob.repo.graph.get(ids[0]).owner == "bob", 5)
    porcelain.rm(alice.repo, ids[1], remove_dependencies=False)
    assert pump_all([alice, bob], lambda: ids[1] not in alice.repo.graph and ids[1] not in bob.repo.graph, 5)
    carol = clients(server, "carol")
    assert pump_all([alice, bob, carol], active(carol), 10)
    assert ids[1] not in carol.repo.graph
    assert carol.repo.graph.get(ids[0]).owner == "bob"
    assert carol.repo.graph.get(ids[2]).owner == RP_COMMON


def test_admin_kick_and_non_admin_kick(server, clients):
    alice, _ = start_session(server, clients)
    bob = clients(server, "bob")
    carol = clients(server, "carol")
    assert pump_all([alice, bob, carol], active(bob, carol), 10)
    # carol is no admin: the server ignores her kick (porcelain would refuse
    # locally, so send it raw as a modified client could).
    carol.repo.push(carol.repo.remote.command, Kick(owner="carol", data={"user": "alice"}))
    pump_all([alice, bob, carol], lambda: False, 1.0)
    assert alice.state == STATE_ACTIVE
    porcelain.kick(alice.repo, "bob")
    assert pump_all([alice, bob, carol], lambda: bob.state == STATE_INITIAL, 5)
    assert bob.exit_reason == {"reason": "kicked by admin"}
    assert pump_all([alice, carol], lambda: "bob" not in alice.session.online_users and "bob" not in carol.session.online_users, 5)


def test_silent_client_is_dropped_and_its_nodes_unlocked(server, clients):
    alice, ids = start_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    porcelain.lock(bob.repo, [ids[0], ids[2]], affect_dependencies=False)
    assert pump_all([alice, bob], lambda: alice.repo.graph.get(ids[2]).owner == "bob", 5)
    # bob's heartbeat process dies and his sockets go quiet.
    bob.session._ttl.kill()
    bob.session._ttl.wait()
    started = time.time()
    assert alice.pump(lambda: "bob" not in alice.session.online_users, 12)
    # TIMEOUT is 3000 ms in these tests; pings go out once a second.
    assert time.time() - started < 8
    assert alice.pump(lambda: alice.repo.graph.get(ids[0]).owner == RP_COMMON and alice.repo.graph.get(ids[2]).owner == RP_COMMON, 3)
    assert "user disconnected" in server.logs()


def test_unauthenticated_data_and_commands_are_ignored(server, clients):
    alice, ids = start_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    intruder_id = os.urandom(16)
    data = raw_dealer(server.port + 1, intruder_id)
    command = raw_dealer(server.port, intruder_id)
    forged = Node(owner="COMMON", uuid="forged-node", data={"evil": True}, dependencies=[])
    data.send_multipart(forged.as_raw_chunks())
    command.send_multipart(Delete(owner="x", data=ids[0]).as_raw_chunks())
    pump_all([alice, bob], lambda: False, 1.0)
    assert "forged-node" not in bob.repo.graph
    assert ids[0] in bob.repo.graph
    carol = clients(server, "carol")
    assert carol.pump(active(carol), 10)
    assert "forged-node" not in carol.repo.graph and ids[0] in carol.repo.graph
    assert "not logged in" in server.logs()
    data.close()
    command.close()


def test_garbage_on_every_port_leaves_server_serving(server, clients):
    alice, ids = start_session(server, clients)
    rng = random.Random(3)
    socks = [raw_dealer(server.port + i) for i in range(3)]
    type_frames = [b"\x80\x04K\x02.", b"\x80\x04K\x01.", b"\x80\x04K\x09.", b"\x80\x04K\x0d.", b"\x80\x04K\x63.", b"junk"]
    for n in range(600):
        s = rng.choice(socks)
        parts = [rng.choice(type_frames)] + [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 6))]
        if n % 7 == 0:
            parts = [os.urandom(rng.randrange(1, 200))]
        s.send_multipart(parts)
    # A logged-in client sending garbage is treated the same way.
    alice.repo.remote.data.send_multipart([b"\x80\x04K\x02.", b"x", b"y", b"\x80\x04garbage", b"\x80"])
    alice.repo.remote.command.send_multipart([b"\x80\x04K\x05.", b"alice", b"\x80\x04\x8c\x05posix\x8c\x06system\x93."])
    time.sleep(0.5)
    assert server.alive()
    assert porcelain.request_session_info(f"127.0.0.1:{server.port}", 1000)["version"] == "0.9.10"
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    assert sorted(bob.repo.graph.keys()) == sorted(ids)
    assert "refused global posix.system" in server.logs()
    for s in socks:
        s.close()


def test_oversize_message_is_refused_and_server_keeps_serving(make_server, clients):
    server = make_server(extra_env={"MAX_MESSAGE_SIZE": "65536"})
    alice, ids = start_session(server, clients)
    big = raw_dealer(server.port + 1)
    big.send_multipart([b"\x80\x04K\x02.", b"u", b"o", b"\x80\x04N.", os.urandom(200_000)])
    time.sleep(0.3)
    assert server.alive()
    bob = clients(server, "bob")
    assert bob.pump(active(bob), 10)
    assert sorted(bob.repo.graph.keys()) == sorted(ids)
    big.close()


def test_commits_are_applied_so_late_joiners_get_the_latest_data(server, clients):
    alice = clients(server, "alice", admin=True)
    assert alice.pump(lambda: alice.state == STATE_LOBBY, 5)
    cube = alice.add("Cube", {
        "location": [0.0, 0.0, 0.0], "rotation_euler": [0.0, 0.0, 0.0], "scale": [1.0, 1.0, 1.0],
        "modifiers": {}, "parent_uid": ("abc", "Root"), "vertex_groups": {0: {"name": "G", "vertices": [(0, 1.0)]}},
        "animation_data": {"action": {"fcurves": [{"data_path": "location", "keyframe_points": []}]}},
    })
    alice.init_session()
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    block = alice.repo.graph.get(cube).instance
    edits = [
        lambda p: p["location"].__setitem__(0, 2.5),                       # move
        lambda p: p["modifiers"].__setitem__("Subdivision", {"type": "SUBSURF", "levels": 2}),  # add modifier
        lambda p: block.__setattr__("name", "Cube.renamed"),               # rename
        lambda p: p["animation_data"]["action"]["fcurves"][0]["keyframe_points"].extend(
            [{"co": [1.0, 0.0]}, {"co": [24.0, 2.5]}]),                    # keyframes
        lambda p: p.__setitem__("parent_uid", ("def", "Other")),           # tuple change
        lambda p: p["vertex_groups"].__setitem__(1, {"name": "H", "vertices": []}),  # int key
        lambda p: p["location"].insert(1, -1.0),                           # list insert
    ]
    for edit in edits:
        edit(block.props)
        alice.commit_push(cube)
        expected = alice.node_data(cube)
        assert pump_all([alice, bob], lambda: bob.node_data(cube) == expected, 5)
    late = clients(server, "carol")
    assert late.pump(active(late), 10)
    assert late.node_data(cube) == alice.node_data(cube)
    assert type(late.node_data(cube)["parent_uid"]) is tuple
    assert late.node_data(cube)["name"] == "Cube.renamed"


def test_commit_that_python_would_abort_is_not_relayed(server, clients):
    from replication.objects import Commit
    from deepdiff import Delta
    alice, ids = start_session(server, clients)
    bob = clients(server, "bob")
    assert pump_all([alice, bob], active(bob), 10)
    before = bob.node_data(ids[0])
    # Inserting into a tuple raises inside deepdiff: the Python server drops
    # such a commit, and so must we (and keep the node as it was).
    commit = Commit()
    commit.node_id = ids[0]
    commit.deps = []
    commit.delta = Delta({"iterable_item_added": {"root['layers'][0]": 9}})
    alice.repo.push(alice.repo.remote.data, commit)
    pump_all([alice, bob], lambda: False, 1.0)
    assert bob.node_data(ids[0]) == before
    assert "Corrupted data frame received" in server.logs()
    carol = clients(server, "carol")
    assert carol.pump(active(carol), 10)
    assert carol.node_data(ids[0]) == alice.node_data(ids[0])
