from conftest import Client, pump_all
from replication.constants import STATE_ACTIVE


def test_admin_init_then_second_client_pulls(server, clients):
    admin = clients(server, "alice", admin=True)
    assert admin.pump(lambda: admin.state != 5, 5)
    ids = [admin.add(f"cube{i}", {"location": [float(i), 0.0, 1.5], "tag": b"\x00\x01"}) for i in range(3)]
    admin.init_session()
    bob = clients(server, "bob")
    assert bob.pump(lambda: bob.state == STATE_ACTIVE, 10)
    for i in ids:
        assert bob.node_data(i) == admin.node_data(i)
