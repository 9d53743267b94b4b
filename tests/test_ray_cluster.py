"""The Ray runner on a cluster of several nodes on this one machine (issue 18): a head and two
worker nodes, each its own raylet with its own resources, every address on the loopback
interface (tests/conftest.py keeps every Ray a test starts on 127.0.0.1). A run joins it with
``ray_address``, spreads its actors over the worker nodes, says where each ran, and leaves the
cluster running with none of its actors left."""

import pytest
import ray
from ray.cluster_utils import Cluster

from contrl.api import train


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs (so no actor lands there) and two worker nodes of 1 CPU each."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def _contrl_actors(address: str) -> list[str]:
    """The names of the run's actors the cluster still has (alive or restarting), from a driver of its own."""
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("contrl-")]
    finally:
        ray.shutdown()


def test_a_run_joins_a_loopback_cluster_spreads_its_actors_and_leaves_it_running(cluster, tmp_path):
    c, workers = cluster
    assert not ray.is_initialized()
    agent = train("ppo", "CartPole-v1", steps=8192, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
                  overrides={"runner": "ray", "ray_address": c.address, "workers": 2, "n_envs": 4,
                             "eval_every": 10**9, "final_eval_episodes": 2})
    nodes = agent.summary["ray_actor_nodes"]
    # one actor on each worker node (the head has no CPU), every one of them on loopback
    assert sorted(n["node_id"] for n in nodes) == sorted(w.node_id for w in workers), nodes
    assert {n["ip"] for n in nodes} == {"127.0.0.1"} and c.address.startswith("127.0.0.1:")
    log = (tmp_path / "run" / "messages.log").read_text()
    for j, n in enumerate(nodes):
        assert f"ray actor {j} runs on node {n['node_id'][:12]} (127.0.0.1)" in log
    # the run left the cluster as it found it: running, its nodes alive, none of its actors left
    assert not ray.is_initialized()
    assert _contrl_actors(c.address) == []
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    try:
        assert sum(1 for n in ray.nodes() if n["Alive"]) == 3
    finally:
        ray.shutdown()
