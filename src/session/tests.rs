//! Handler tests: each feeds decoded messages to the state and checks what
//! it would send.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::pickle::{self, Value, dict};
use crate::wire::{self, Command, CommandKind, NodeFrames, Update};

pub(crate) fn peer(n: u8) -> PeerId {
    PeerId::from(vec![n; 16])
}

fn session(server_password: &str) -> SessionState {
    SessionState::new(SessionConfig::new("apw", server_password))
}

fn cmd(kind: CommandKind, owner: &str, data: Value) -> Command {
    Command::decode(&Command::frames(kind, owner, &data)).unwrap()
}

fn auth_data(user: &str, admin: bool, spwd: Value, apwd: Value, version: &str) -> Value {
    dict([
        ("AUTH_TYPE", Value::str(if admin { "ADMIN" } else { "CLIENT" })),
        ("AUTH_ID", Value::str(user)),
        ("S_PWD", spwd),
        ("A_PWD", apwd),
        ("VERSION", Value::str(version)),
    ])
}

/// Every command sent to `to`, decoded.
fn sent_to(out: &[Outgoing], to: &PeerId) -> Vec<Command> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Send {
                channel: Channel::Command,
                to: t,
                frames,
            } if t == to => Some(Command::decode(frames).unwrap()),
            _ => None,
        })
        .collect()
}

fn data_sent_to(out: &[Outgoing], to: &PeerId) -> Vec<Arc<Vec<Bytes>>> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Send {
                channel: Channel::Data,
                to: t,
                frames,
            } if t == to => Some(frames.clone()),
            _ => None,
        })
        .collect()
}

fn login(s: &mut SessionState, p: u8, user: &str, admin: bool) -> String {
    s.handle_command(
        peer(p),
        cmd(
            CommandKind::Auth,
            user,
            auth_data(user, admin, Value::str(""), Value::str("apw"), "0.9.10"),
        ),
    );
    let out = s.drain_out();
    let replies = sent_to(&out, &peer(p));
    let auth = replies
        .iter()
        .rfind(|c| c.kind == CommandKind::Auth)
        .expect("auth answer");
    auth.data.as_str().unwrap().to_string()
}

fn node_frames(uuid: &str, owner: &str, data: &Value) -> Vec<Bytes> {
    NodeFrames {
        uuid: uuid.into(),
        owner: owner.into(),
        dependencies: Some(vec![]),
        raw_dependencies: wire::encode_dependencies(&Some(vec![])),
        raw_data: Bytes::from(pickle::encode(data)),
    }
    .frames(owner)
}

/// `sender` asks that `uuids` belong to `owner`.
fn right_cmd(sender: &str, uuids: &[&str], owner: &str) -> Command {
    let uuids = Value::List(uuids.iter().map(|u| Value::str(u)).collect());
    cmd(
        CommandKind::Right,
        sender,
        dict([("uuid", uuids), ("owner", Value::str(owner))]),
    )
}

/// ServerSnapshot INIT announcing `nodes`.
fn init_cmd(nodes: &[&str]) -> Command {
    let data = dict([
        ("STATE", Value::str("INIT")),
        ("SIZE", Value::Int(nodes.len() as i64)),
        ("NODES", Value::List(nodes.iter().map(|u| Value::str(u)).collect())),
    ]);
    cmd(CommandKind::ServerSnapshot, "server", data)
}

/// ServerSnapshot SET carrying one node's frames.
fn set_cmd(frames: &[Bytes]) -> Command {
    let data = dict([
        ("STATE", Value::str("SET")),
        ("DATA", Value::List(frames.iter().map(|f| Value::bytes(f)).collect())),
    ]);
    cmd(CommandKind::ServerSnapshot, "server", data)
}

fn init_session(s: &mut SessionState, admin: u8, nodes: &[(&str, Value)]) {
    let uuids: Vec<&str> = nodes.iter().map(|(u, _)| *u).collect();
    s.handle_command(peer(admin), init_cmd(&uuids));
    for (u, data) in nodes {
        let frames = node_frames(u, "COMMON", data);
        s.handle_command(peer(admin), set_cmd(&frames));
    }
    s.handle_command(
        peer(admin),
        cmd(
            CommandKind::ServerSnapshot,
            "server",
            dict([("STATE", Value::str("END"))]),
        ),
    );
}

#[test]
fn auth_answers_lobby_then_running() {
    let mut s = session("");
    assert_eq!(login(&mut s, 1, "alice", true), "LOBBY");
    init_session(&mut s, 1, &[("n1", Value::Int(1))]);
    assert_eq!(s.state(), ServerState::Active);
    assert_eq!(login(&mut s, 2, "bob", false), "RUNNING");
}

/// Sends an Auth and returns the answer the sender got.
fn try_auth(s: &mut SessionState, p: u8, user: &str, admin: bool, spwd: Value, apwd: Value, version: &str) -> String {
    s.handle_command(
        peer(p),
        cmd(CommandKind::Auth, user, auth_data(user, admin, spwd, apwd, version)),
    );
    last_auth(s, p)
}

#[test]
fn auth_refusals_in_python_order() {
    let mut s = session("spw");
    assert_eq!(login(&mut s, 1, "alice", false), WRONG_SERVER);
    assert_eq!(
        try_auth(&mut s, 1, "alice", false, Value::str("spw"), Value::None, "0.9.10"),
        "LOBBY"
    );
    // Same name again: already logged in wins over every other check.
    let refusals = [
        (
            2,
            "alice",
            true,
            Value::None,
            Value::str("x"),
            "FAILED: client already logged in",
        ),
        (
            3,
            "bob",
            true,
            Value::None,
            Value::str("x"),
            "FAILED: wrong admin password",
        ),
        (
            3,
            "bob",
            false,
            Value::str("nope"),
            Value::None,
            "FAILED: wrong server password",
        ),
        (
            3,
            "bob",
            false,
            Value::str("spw"),
            Value::None,
            "FAILED: wrong client version (0.1 != 0.9.10)",
        ),
    ];
    for (p, user, admin, spwd, apwd, want) in refusals {
        assert_eq!(try_auth(&mut s, p, user, admin, spwd, apwd, "0.1"), want);
    }
    assert_eq!(s.client_count(), 1);
}

const WRONG_SERVER: &str = "FAILED: wrong server password";

fn last_auth(s: &mut SessionState, p: u8) -> String {
    let out = s.drain_out();
    sent_to(&out, &peer(p))
        .iter()
        .rfind(|c| c.kind == CommandKind::Auth)
        .unwrap()
        .data
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn public_server_accepts_empty_and_none_passwords() {
    let mut s = session("");
    s.handle_command(
        peer(1),
        cmd(
            CommandKind::Auth,
            "a",
            auth_data("a", false, Value::None, Value::None, "0.9.10"),
        ),
    );
    assert_eq!(last_auth(&mut s, 1), "LOBBY");
    s.handle_command(
        peer(2),
        cmd(
            CommandKind::Auth,
            "b",
            auth_data("b", false, Value::str(""), Value::None, "0.9.10"),
        ),
    );
    assert_eq!(last_auth(&mut s, 2), "LOBBY");
}

#[test]
fn auth_broadcasts_clients_state_before_answering() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    s.handle_command(
        peer(2),
        cmd(
            CommandKind::Auth,
            "bob",
            auth_data("bob", false, Value::str(""), Value::None, "0.9.10"),
        ),
    );
    let out = s.drain_out();
    let to_bob = sent_to(&out, &peer(2));
    assert_eq!(to_bob.len(), 2);
    assert_eq!(to_bob[0].kind, CommandKind::UpdateClientsState);
    let users = &to_bob[0].data;
    assert_eq!(users.as_dict().unwrap().len(), 2);
    let bob = users.get("bob").unwrap();
    assert_eq!(bob.get("status"), Some(&Value::Int(STATUS_LOBBY)));
    assert_eq!(bob.get("latency"), Some(&Value::Int(UNKNOWN_LATENCY)));
    assert_eq!(bob.get("admin"), Some(&Value::Bool(false)));
    assert_eq!(to_bob[1].kind, CommandKind::Auth);
    assert_eq!(sent_to(&out, &peer(1))[0].kind, CommandKind::UpdateClientsState);
    assert!(out.contains(&Outgoing::Admit(peer(2))));
}

#[test]
fn malformed_auth_is_refused_with_a_reason() {
    let mut s = session("");
    s.handle_command(peer(1), cmd(CommandKind::Auth, "x", Value::str("garbage")));
    assert_eq!(last_auth(&mut s, 1), auth::MALFORMED_REQUEST);
    assert_eq!(s.client_count(), 0);
}

#[test]
fn server_info_reports_privacy() {
    for (pw, private) in [("", false), ("x", true)] {
        let mut s = session(pw);
        s.handle_command(
            peer(9),
            cmd(CommandKind::RequestServerInfo, "guest", Value::str("RQ_INFO")),
        );
        let out = s.drain_out();
        let reply = &sent_to(&out, &peer(9))[0];
        assert_eq!(reply.kind, CommandKind::RequestServerInfo);
        assert_eq!(reply.data.get("private"), Some(&Value::Bool(private)));
        assert_eq!(reply.data.get("version"), Some(&Value::str("0.9.10")));
        assert_eq!(s.client_count(), 0, "server info keeps nothing");
    }
}

#[test]
fn unauthenticated_commands_and_updates_are_ignored() {
    let mut s = session("");
    s.handle_command(peer(5), cmd(CommandKind::Delete, "x", Value::str("n1")));
    s.handle_update(
        peer(5),
        Update::decode(&node_frames("n1", "x", &Value::Int(1))).unwrap(),
        Arc::new(node_frames("n1", "x", &Value::Int(1))),
    );
    assert!(s.drain_out().is_empty());
    assert!(s.graph().is_empty());
}

#[test]
fn init_stores_nodes_and_sends_catalog_to_waiting_clients() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    login(&mut s, 2, "bob", false);
    s.handle_command(peer(1), init_cmd(&["n1", "n2"]));
    let out = s.drain_out();
    assert_eq!(
        sent_to(&out, &peer(1))[0].data.get("STATE"),
        Some(&Value::str("ACCEPTED"))
    );
    assert_eq!(s.state(), ServerState::SrvSync);
    for u in ["n1", "n2"] {
        let frames = node_frames(u, "alice", &Value::str(u));
        s.handle_command(peer(1), set_cmd(&frames));
    }
    let out = s.drain_out();
    assert_eq!(sent_to(&out, &peer(1))[0].data.get("STATE"), Some(&Value::str("DONE")));
    let to_bob = sent_to(&out, &peer(2));
    assert_eq!(to_bob[0].kind, CommandKind::Snapshot);
    assert_eq!(
        to_bob[0].data.get("CATALOG"),
        Some(&Value::List(vec![Value::str("n1"), Value::str("n2")]))
    );
    assert_eq!(s.state(), ServerState::Active);
    assert_eq!(s.graph().get("n1").unwrap().owner, "alice");
}

#[test]
fn init_is_rejected_while_active_and_from_non_admins() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    login(&mut s, 2, "bob", false);
    let init = || init_cmd(&["n"]);
    s.handle_command(peer(2), init());
    let out = s.drain_out();
    assert_eq!(
        sent_to(&out, &peer(2))[0].data.get("STATE"),
        Some(&Value::str("REJECTED"))
    );
    init_session(&mut s, 1, &[("n1", Value::Int(1))]);
    s.drain_out();
    s.handle_command(peer(1), init());
    let out = s.drain_out();
    assert_eq!(
        sent_to(&out, &peer(1))[0].data.get("STATE"),
        Some(&Value::str("REJECTED"))
    );
    assert_eq!(s.graph().len(), 1);
}

#[test]
fn stray_snapshot_set_is_ignored() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    s.handle_command(peer(1), init_cmd(&["n1"]));
    let frames = node_frames("intruder", "alice", &Value::Int(0));
    s.handle_command(peer(1), set_cmd(&frames));
    assert!(!s.graph().contains("intruder"));
    assert_eq!(s.state(), ServerState::SrvSync);
}

#[test]
fn snapshot_get_serves_node_frames_or_removed() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    init_session(&mut s, 1, &[("n1", Value::str("payload"))]);
    login(&mut s, 2, "bob", false);
    s.handle_command(
        peer(2),
        cmd(
            CommandKind::Snapshot,
            "bob",
            dict([("STATE", Value::str("GET")), ("ID", Value::str("n1"))]),
        ),
    );
    s.handle_command(
        peer(2),
        cmd(
            CommandKind::Snapshot,
            "bob",
            dict([("STATE", Value::str("GET")), ("ID", Value::str("gone"))]),
        ),
    );
    let out = s.drain_out();
    let replies = sent_to(&out, &peer(2));
    let Some(Value::List(frames)) = replies[0].data.get("DATA") else {
        panic!("no frames")
    };
    let frames: Vec<Bytes> = frames
        .iter()
        .map(|f| Bytes::copy_from_slice(f.as_bytes().unwrap()))
        .collect();
    let node = NodeFrames::decode(&frames).unwrap();
    assert_eq!(
        pickle::decode(&node.raw_data, pickle::Allow::Data).unwrap(),
        Value::str("payload")
    );
    assert_eq!(replies[1].data.get("DATA"), Some(&Value::bytes(b"removed")));
    s.handle_command(
        peer(2),
        cmd(CommandKind::Snapshot, "bob", dict([("STATE", Value::str("DONE"))])),
    );
    assert_eq!(
        s.clients().find(|(p, _)| **p == peer(2)).unwrap().1.status,
        STATUS_ACTIVE
    );
}

#[test]
fn node_update_is_relayed_to_others_only_and_keeps_owner() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    init_session(&mut s, 1, &[("n1", Value::Int(1))]);
    login(&mut s, 2, "bob", false);
    s.drain_out();
    let frames = node_frames("n1", "bob", &Value::Int(2));
    s.handle_update(peer(2), Update::decode(&frames).unwrap(), Arc::new(frames.clone()));
    let out = s.drain_out();
    assert_eq!(data_sent_to(&out, &peer(1)), vec![Arc::new(frames)]);
    assert!(data_sent_to(&out, &peer(2)).is_empty(), "no echo to the sender");
    let stored = s.graph.get_mut("n1").unwrap();
    assert_eq!(stored.owner, "COMMON");
    assert_eq!(
        pickle::decode(&stored.raw_data(), pickle::Allow::Data).unwrap(),
        Value::Int(2)
    );
}

#[test]
fn commit_for_unknown_node_is_not_relayed() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    login(&mut s, 2, "bob", false);
    s.drain_out();
    let frames = vec![
        wire::type_frame(wire::TYPE_COMMIT),
        Bytes::from_static(b"nowhere"),
        wire::encode_dependencies(&None),
        Bytes::from(pickle::encode(&dict([]))),
    ];
    s.handle_update(peer(1), Update::decode(&frames).unwrap(), Arc::new(frames));
    assert!(s.drain_out().is_empty());
}

#[test]
fn metadata_is_merged_and_forwarded_with_the_authenticated_owner() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    login(&mut s, 2, "bob", false);
    s.drain_out();
    let md = dict([("tasks", Value::str("[\"paint\"]")), ("frame_current", Value::Int(3))]);
    s.handle_command(peer(2), cmd(CommandKind::UpdateUserMetadata, "mallory", md));
    s.handle_command(
        peer(2),
        cmd(
            CommandKind::UpdateUserMetadata,
            "bob",
            dict([("frame_current", Value::Int(4))]),
        ),
    );
    let out = s.drain_out();
    let to_alice = sent_to(&out, &peer(1));
    assert_eq!(to_alice.len(), 2);
    assert!(to_alice.iter().all(|c| c.owner == "bob"));
    assert!(sent_to(&out, &peer(2)).is_empty());
    let bob = s.clients().find(|(p, _)| **p == peer(2)).unwrap().1;
    assert_eq!(
        bob.metadata,
        vec![
            (Value::str("tasks"), Value::str("[\"paint\"]")),
            (Value::str("frame_current"), Value::Int(4))
        ]
    );
}

#[test]
fn delete_and_right_reach_everyone_and_change_the_graph() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    let dep_frames = NodeFrames {
        uuid: "n2".into(),
        owner: "COMMON".into(),
        dependencies: Some(vec!["n1".into()]),
        raw_dependencies: wire::encode_dependencies(&Some(vec!["n1".into()])),
        raw_data: Bytes::from(pickle::encode(&Value::None)),
    };
    init_session(&mut s, 1, &[("n1", Value::Int(1))]);
    s.graph.put_node(dep_frames);
    login(&mut s, 2, "bob", false);
    s.drain_out();
    s.handle_command(peer(2), right_cmd("bob", &["n2", "ghost"], "bob"));
    assert_eq!(s.graph().get("n2").unwrap().owner, "bob");
    s.handle_command(peer(2), cmd(CommandKind::Delete, "client", Value::str("n1")));
    let out = s.drain_out();
    for p in [1, 2] {
        let kinds: Vec<_> = sent_to(&out, &peer(p)).iter().map(|c| c.kind).collect();
        assert_eq!(kinds, vec![CommandKind::Right, CommandKind::Delete]);
    }
    assert!(!s.graph().contains("n1"));
    assert_eq!(s.graph().get("n2").unwrap().dependencies, Some(vec![]));
    let raw = &s.graph().get("n2").unwrap().raw_dependencies;
    assert_eq!(pickle::decode(raw, pickle::Allow::Data).unwrap(), Value::List(vec![]));
}

#[test]
fn only_admins_kick_and_kicked_users_lose_their_locks() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    init_session(&mut s, 1, &[("n1", Value::Int(1))]);
    login(&mut s, 2, "bob", false);
    login(&mut s, 3, "carol", false);
    s.handle_command(peer(2), right_cmd("bob", &["n1"], "bob"));
    s.drain_out();
    s.handle_command(
        peer(3),
        cmd(CommandKind::Kick, "carol", dict([("user", Value::str("bob"))])),
    );
    assert!(s.drain_out().is_empty());
    assert_eq!(s.client_count(), 3);
    s.handle_command(
        peer(1),
        cmd(CommandKind::Kick, "alice", dict([("user", Value::str("bob"))])),
    );
    let out = s.drain_out();
    let to_bob = sent_to(&out, &peer(2));
    assert_eq!(to_bob[0].kind, CommandKind::Disconnect);
    assert_eq!(to_bob[0].data, dict([("reason", Value::str("kicked by admin"))]));
    assert!(out.contains(&Outgoing::Evict(peer(2))));
    let to_carol = sent_to(&out, &peer(3));
    assert_eq!(to_carol[0].kind, CommandKind::Right);
    assert_eq!(to_carol[0].owner, "server");
    assert_eq!(to_carol[0].data.get("owner"), Some(&Value::str("COMMON")));
    assert_eq!(s.graph().get("n1").unwrap().owner, "COMMON");
    assert_eq!(s.client_count(), 2);
}

#[test]
fn heartbeat_latency_and_loss() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    login(&mut s, 2, "bob", false);
    s.drain_out();
    s.handle_heartbeat(HeartbeatEvent::Latencies(vec![(peer(1), 12), (peer(2), 30)]));
    let out = s.drain_out();
    let ucs = &sent_to(&out, &peer(1))[0];
    assert_eq!(
        ucs.data.get("bob").and_then(|b| b.get("latency")),
        Some(&Value::Int(30))
    );
    s.handle_heartbeat(HeartbeatEvent::Lost(peer(2)));
    assert_eq!(s.client_count(), 1);
    s.handle_heartbeat(HeartbeatEvent::Latencies(vec![]));
    let out = s.drain_out();
    let ucs = sent_to(&out, &peer(1))
        .into_iter()
        .rfind(|c| c.kind == CommandKind::UpdateClientsState)
        .unwrap();
    assert!(ucs.data.get("bob").is_none());
}

#[test]
fn uploader_leaving_mid_init_resets_to_waiting() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    s.handle_command(peer(1), init_cmd(&["a", "b"]));
    s.handle_heartbeat(HeartbeatEvent::Lost(peer(1)));
    assert_eq!(s.state(), ServerState::Waiting);
    assert_eq!(login(&mut s, 2, "bob", true), "LOBBY");
}

fn commit_frames(node: &str, delta: &Value) -> Vec<Bytes> {
    vec![
        wire::type_frame(wire::TYPE_COMMIT),
        Bytes::copy_from_slice(node.as_bytes()),
        wire::encode_dependencies(&Some(vec!["dep".into()])),
        Bytes::from(pickle::encode(delta)),
    ]
}

#[test]
fn commit_is_applied_and_relayed_or_rejected_whole() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    let base = dict([
        ("loc", Value::List(vec![Value::Float(0.0)])),
        ("t", Value::Tuple(vec![Value::Int(1)])),
    ]);
    init_session(&mut s, 1, &[("n1", base)]);
    login(&mut s, 2, "bob", false);
    s.drain_out();
    let move_it = dict([(
        "values_changed",
        dict([("root['loc'][0]", dict([("new_value", Value::Float(2.5))]))]),
    )]);
    let frames = commit_frames("n1", &move_it);
    s.handle_update(peer(1), Update::decode(&frames).unwrap(), Arc::new(frames.clone()));
    let out = s.drain_out();
    assert_eq!(data_sent_to(&out, &peer(2)), vec![Arc::new(frames)]);
    let node = s.graph.get_mut("n1").unwrap();
    assert_eq!(node.dependencies, Some(vec!["dep".into()]));
    let expected = dict([
        ("loc", Value::List(vec![Value::Float(2.5)])),
        ("t", Value::Tuple(vec![Value::Int(1)])),
    ]);
    assert_eq!(node.value().unwrap(), &expected);
    // Inserting into a tuple raises in Python: the whole patch is refused.
    let bad = dict([
        (
            "values_changed",
            dict([("root['loc'][0]", dict([("new_value", Value::Float(9.0))]))]),
        ),
        ("iterable_item_added", dict([("root['t'][0]", Value::Int(5))])),
    ]);
    let frames = commit_frames("n1", &bad);
    s.handle_update(peer(1), Update::decode(&frames).unwrap(), Arc::new(frames));
    assert!(s.drain_out().is_empty(), "an aborted commit is not relayed");
    assert_eq!(s.graph.get_mut("n1").unwrap().value().unwrap(), &expected);
}

#[test]
fn saved_session_restores_active_with_nodes_common_and_retained_metadata() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    init_session(
        &mut s,
        1,
        &[("n1", dict([("v", Value::Int(1))])), ("n2", Value::Int(2))],
    );
    login(&mut s, 2, "bob", false);
    let tasks = Value::str("[{\"title\": \"rig\"}]");
    s.handle_command(
        peer(2),
        cmd(
            CommandKind::UpdateUserMetadata,
            "bob",
            dict([("tasks", tasks.clone()), ("frame_current", Value::Int(9))]),
        ),
    );
    s.handle_command(peer(2), right_cmd("bob", &["n2"], "bob"));
    let move_it = dict([(
        "values_changed",
        dict([("root['v']", dict([("new_value", Value::Int(5))]))]),
    )]);
    let frames = commit_frames("n1", &move_it);
    s.handle_update(peer(1), Update::decode(&frames).unwrap(), Arc::new(frames));
    let journal = s.drain_journal();
    assert!(
        journal.contains(&crate::store::JournalEntry::Initialized),
        "{journal:?}"
    );

    // Snapshot image alone, and the empty image plus the journal, restore the same.
    let image = crate::store::writer::image_of(s.view(), "test", 1.0, 1);
    for (img, entries) in [(image, Vec::new()), (crate::store::SessionImage::default(), journal)] {
        let mut r = session("");
        let restored = r.restore(img, entries);
        assert!(restored.initialized);
        assert_eq!(r.state(), ServerState::Active);
        assert_eq!(r.graph().len(), 2);
        assert_eq!(
            r.graph().get("n2").unwrap().owner,
            "COMMON",
            "nobody is connected after a restart"
        );
        assert_eq!(
            r.graph.get_mut("n1").unwrap().value().unwrap(),
            &dict([("v", Value::Int(5))])
        );
        // bob comes back and gets his tasks; presence keys are not kept.
        assert_eq!(login(&mut r, 7, "bob", false), "RUNNING");
        let bob = r.clients().find(|(p, _)| **p == peer(7)).unwrap().1;
        assert_eq!(bob.metadata, vec![(Value::str("tasks"), tasks.clone())]);
        // A newcomer gets the newest tasks anyone left.
        login(&mut r, 8, "carol", false);
        let carol = r.clients().find(|(p, _)| **p == peer(8)).unwrap().1;
        assert_eq!(carol.metadata, vec![(Value::str("tasks"), tasks.clone())]);
    }
}

#[test]
fn partial_upload_is_not_restored() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    s.handle_command(peer(1), init_cmd(&["a", "b"]));
    let frames = node_frames("a", "COMMON", &Value::Int(1));
    s.handle_command(peer(1), set_cmd(&frames));
    let mut r = session("");
    let restored = r.restore(crate::store::SessionImage::default(), s.drain_journal());
    assert!(!restored.initialized);
    assert_eq!(r.state(), ServerState::Waiting);
    assert!(r.graph().is_empty());
}

#[test]
fn disconnects_ask_for_a_save() {
    let mut s = session("");
    login(&mut s, 1, "alice", true);
    s.drain_save_requests();
    s.handle_heartbeat(HeartbeatEvent::Lost(peer(1)));
    assert_eq!(s.drain_save_requests(), vec!["user_disconnect:alice".to_string()]);
}
