"""The Ray runner on a cluster of several nodes on this one machine (issue 18): a head and three
worker nodes, each its own raylet with its own resources, every address on the loopback
interface (tests/conftest.py keeps every Ray a test starts on 127.0.0.1). A run joins it with
``ray_address``, spreads its actors over the worker nodes, says where each ran, and leaves the
cluster running with none of its actors left (default run). Slow-marked: a node lost mid-run
(its actor moves to the spare node, the run goes on and learns), and a node lost with no room
left for its actor (the run stops in one line, keeping its checkpoint)."""

import re
import threading

import pytest
import ray
from ray.cluster_utils import Cluster

from contrl.api import train
from contrl.errors import Fault
from contrl.runners.ray_runner import RayActors


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs (so no actor lands there) and three worker nodes of 1 CPU each: room
    for a run's two actors and for one of them restarted after its node is lost."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(3)]
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
    # one actor on each of two worker nodes (the head has no CPU), every one of them on loopback
    assert len({n["node_id"] for n in nodes}) == 2 and {n["node_id"] for n in nodes} <= {w.node_id for w in workers}
    assert {n["ip"] for n in nodes} == {"127.0.0.1"} and c.address.startswith("127.0.0.1:")
    log = (tmp_path / "run" / "messages.log").read_text()
    for j, n in enumerate(nodes):
        assert f"ray actor {j} runs on node {n['node_id'][:12]} (127.0.0.1)" in log
    # the run left the cluster as it found it: running, its nodes alive, none of its actors left
    assert not ray.is_initialized()
    assert _contrl_actors(c.address) == []
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    try:
        assert sum(1 for n in ray.nodes() if n["Alive"]) == 4
    finally:
        ray.shutdown()


def _lose_actors_node(c, run, lost):
    """An eval hook: at the first periodic evaluation, remove the node actor 0 runs on."""
    def hook(step, mean):
        if lost:
            return
        node_id = re.search(r"ray actor 0 runs on node (\w+)", (run / "messages.log").read_text()).group(1)
        victim = next(w for w in c.worker_nodes if w.node_id.startswith(node_id))
        lost.append(victim.node_id)
        threading.Timer(0.2, lambda: c.remove_node(victim)).start()

    return hook


@pytest.mark.slow
def test_a_node_lost_mid_run_moves_its_actor_and_the_run_goes_on(cluster, tmp_path):
    """At the first periodic evaluation the node that actor 0 runs on is removed (its raylet and
    every process on it killed). Ray restarts the actor on the spare node; the run counts the
    death, logs which node was lost and where the actor went, and finishes learning as an
    undisturbed run does (the ppo CartPole preset on 2 actors x 4 envs: 500 for seed 1 on a
    local Ray, tests/test_ray.py)."""
    c, workers = cluster
    run, lost = tmp_path / "run", []
    agent = train("ppo", "CartPole-v1", steps=60_000, seed=1, out=run, quiet=True, tensorboard=False,
                  overrides={"runner": "ray", "ray_address": c.address, "workers": 2, "n_envs": 4,
                             "eval_every": 20_000}, eval_hook=_lose_actors_node(c, run, lost))
    s = agent.summary
    assert len(lost) == 1 and s["steps"] >= 60_000
    assert s["ray_actor_restarts"] == [1, 0], s
    assert s["ray_actor_nodes"][0]["node_id"] not in lost and s["ray_actor_nodes"][0]["ip"] == "127.0.0.1"
    log = run.joinpath("messages.log").read_text()
    assert "ray actor 0 died" in log, log
    now = s["ray_actor_nodes"][0]["node_id"][:12]
    assert (f"ray actor 0 moved to node {now} (127.0.0.1) from node {lost[0][:12]} (127.0.0.1), "
            f"which Ray reports lost") in log, log
    assert s["final_eval"]["mean"] >= 475, s
    c.add_node(num_cpus=1)  # the cluster as the next test found it: three worker nodes
    c.wait_for_nodes()


@pytest.mark.slow
def test_a_node_lost_with_no_room_left_stops_the_run_in_one_line(cluster, tmp_path, monkeypatch):
    """Three actors on the three worker nodes; one node is lost and no node has a CPU free for
    its actor: Ray keeps it "restarting", and after ``restart_wait`` the run stops with a Fault
    that says so and what to do, keeping its last checkpoint."""
    c, _ = cluster
    monkeypatch.setattr(RayActors, "restart_wait", 10.0)
    run, lost = tmp_path / "run", []
    with pytest.raises(Fault, match=r"ray actor 0 has not come back 1\d s after it died: no node of the cluster has "
                                    r"1 CPU free to restart it on \(a node lost\?\); add nodes or lower --workers, "
                                    r"then --resume"):
        train("ppo", "CartPole-v1", steps=60_000, seed=1, out=run, quiet=True, tensorboard=False,
              overrides={"runner": "ray", "ray_address": c.address, "workers": 3, "n_envs": 4, "batch_size": 128,
                         "eval_every": 6144}, eval_hook=_lose_actors_node(c, run, lost))
    assert len(lost) == 1 and (run / "checkpoints" / "latest.pt").exists()
    assert not ray.is_initialized() and _contrl_actors(c.address) == []  # a failed run leaves no actor behind
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
