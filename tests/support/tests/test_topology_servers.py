"""The cluster and sentinel topologies the failover tests run on behave as promised."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from support.cluster_servers import RedisClusterServers
    from support.sentinel_servers import SentinelServers

# The fixtures come from cluster_servers and sentinel_servers, plugins registered
# by conftest.py.


def test_cluster_has_three_primaries_each_with_a_replica_and_all_slots(
    cluster: RedisClusterServers,
) -> None:
    primaries = cluster.primaries()
    assert len(primaries) == 3
    replicas = {cluster.replica_of(primary) for primary in primaries}
    assert replicas == set(cluster.replicas())
    assert len(replicas) == 3
    assert set(primaries) | replicas == set(cluster.nodes)
    client = cluster.client()
    for node in cluster.nodes:
        with node.client(decode_responses=True) as direct:
            info = direct.execute_command("CLUSTER", "INFO")
        assert "cluster_state:ok" in info
        assert "cluster_slots_ok:16384" in info
    assert client.set("k", "v")
    assert client.get("k") == b"v"


def test_keys_with_one_hash_tag_live_on_one_primary(cluster: RedisClusterServers) -> None:
    owners = {cluster.primary_for(f"{{stream:logs}}:{n}") for n in range(20)}
    assert len(owners) == 1
    assert len({cluster.primary_for(f"key:{n}") for n in range(50)}) == 3
    client = cluster.client()
    client.set("{stream:logs}:a", "1")
    with owners.pop().client() as direct:
        assert direct.get("{stream:logs}:a") == b"1"


def test_killing_a_primary_promotes_its_replica(own_cluster: RedisClusterServers) -> None:
    key = "{stream:logs}:entries"
    own_cluster.client().set(key, "before")
    old = own_cluster.primary_for(key)
    heir = own_cluster.replica_of(old)
    started = time.monotonic()
    own_cluster.kill(old)
    assert own_cluster.wait_for_failover(old, timeout=15) is heir
    print(f"cluster failover took {time.monotonic() - started:.2f}s")
    assert own_cluster.primary_for(key) is heir
    client = own_cluster.client()
    assert client.get(key) == b"before"
    assert client.set(key, "after")
    assert client.get(key) == b"after"
    own_cluster.restart(old)
    assert own_cluster.replica_of(heir) is old


def test_sentinel_failover_swaps_roles_and_writes_follow(
    sentinel_servers: SentinelServers,
) -> None:
    old, replica = sentinel_servers.primary, sentinel_servers.replica
    sentinel_servers.client().set("before", "1")
    started = time.monotonic()
    assert sentinel_servers.failover() is replica
    print(f"sentinel failover took {time.monotonic() - started:.2f}s")
    assert sentinel_servers.primary is replica
    assert sentinel_servers.replica is old
    assert sentinel_servers.current_primary_address()[1] == replica.port
    client = sentinel_servers.client()
    assert client.get("before") == b"1"
    assert client.set("after", "2")
    with replica.client() as direct:
        assert direct.get("after") == b"2"


def test_killing_the_sentinel_primary_promotes_the_replica(
    sentinel_servers: SentinelServers,
) -> None:
    old, replica = sentinel_servers.primary, sentinel_servers.replica
    with old.client() as direct:
        direct.set("before", "1")
        assert direct.wait(1, 1000) == 1  # replicated, so it must survive the failover
    started = time.monotonic()
    assert sentinel_servers.kill_primary_and_wait() is replica
    print(f"sentinel kill failover took {time.monotonic() - started:.2f}s")
    assert not old.is_running
    client = sentinel_servers.client()
    assert client.get("before") == b"1"
    assert client.set("after", "2")
