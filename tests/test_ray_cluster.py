"""The Ray runner on a cluster of several nodes on this one machine (issue 18): a head and three
worker nodes, each its own raylet with its own resources, every address on the loopback
interface (tests/conftest.py keeps every Ray a test starts on 127.0.0.1). A run joins it with
``ray_address``, spreads its actors over the worker nodes, says where each ran, and leaves the
cluster running with none of its actors left, also after Ctrl-C, and after a run of the same
process on a Ray of its own (default run). Slow-marked: A3C
learning with its actors on two nodes, a learner killed and its run resumed exactly on another
Ray, a node lost mid-run (its actor moves to the spare node, the run goes on and learns), and a
node lost with no room left for its actor (the run stops in one line, keeping its checkpoint)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

import contrl
from contrl.api import train
from contrl.errors import Fault, Interrupted
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


def test_ctrl_c_on_a_cluster_run_leaves_no_actor_and_the_cluster_running(cluster, tmp_path):
    """Ctrl-C (SIGINT) mid-run on a joined cluster: the run stops cleanly (latest.pt, exit as
    Interrupted), and the cluster keeps running with none of the run's actors left."""
    c, _ = cluster

    def interrupt(step, mean):
        if step == 2048:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the runner: stop after this iteration
            time.sleep(0.1)

    with pytest.raises(Interrupted):
        train("ppo", "CartPole-v1", steps=60_000, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
              overrides={"runner": "ray", "ray_address": c.address, "workers": 2, "n_envs": 4, "n_steps": 256,
                         "batch_size": 256, "n_epochs": 1, "eval_every": 2048, "eval_episodes": 1},
              eval_hook=interrupt)
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
    assert not ray.is_initialized() and _contrl_actors(c.address) == []


def test_a_run_on_its_own_ray_then_one_on_the_cluster_in_one_process(cluster, tmp_path, monkeypatch):
    """A run that starts a Ray of its own, then in the same process a run that joins the cluster
    (a notebook: try locally, then on the cluster). Ray 2.60's ``ray.init`` of a new local Ray
    turns token authentication on for the whole process; left on, the cluster (started without
    it) cancelled every actor the second run created ("ray actor 0 failed 4 times")."""
    c, _ = cluster
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # as in a fresh process
    short = {"runner": "ray", "workers": 1, "n_envs": 4, "n_steps": 128, "batch_size": 256, "n_epochs": 1,
             "eval_every": 10**9, "final_eval_episodes": 1}
    train("ppo", "CartPole-v1", steps=1024, out=tmp_path / "own", quiet=True, tensorboard=False,
          overrides={**short, "ray_address": ""})
    assert "RAY_AUTH_MODE" not in os.environ and not ray.is_initialized()
    agent = train("ppo", "CartPole-v1", steps=1024, out=tmp_path / "joined", quiet=True, tensorboard=False,
                  overrides={**short, "ray_address": c.address, "workers": 2})
    assert agent.summary["steps"] >= 1024 and agent.summary["ray_actor_restarts"] == [0, 0]
    assert _contrl_actors(c.address) == []


@pytest.mark.slow
def test_a3c_on_the_cluster_learns_with_actors_on_two_nodes(cluster, tmp_path):
    """A3C's asynchronous pattern across nodes: 2 gradient actors x 4 envs on two worker nodes,
    4 gradients per request (ray_segments), 100k steps; as tests/test_ray.py's a3c test, the
    claim is on the best checkpoint re-evaluated on 20 unseen episodes (an untrained policy
    scores ~10-20). Measured on a local Ray with 4 segments: 500 and 500 (seeds 0, 1)."""
    c, workers = cluster
    agent = train("a3c", "CartPole-v1", steps=100_000, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
                  overrides={"runner": "ray", "ray_address": c.address, "workers": 2, "n_envs": 4,
                             "ray_segments": 4})
    nodes = {n["node_id"] for n in agent.summary["ray_actor_nodes"]}
    assert len(nodes) == 2 and nodes <= {w.node_id for w in workers}
    ev = contrl.load(tmp_path / "run").evaluate(episodes=20, seed=777)
    assert ev["mean"] >= 150, (ev, agent.summary)
    assert _contrl_actors(c.address) == []


@pytest.mark.slow
def test_a_run_whose_learner_dies_resumes_exactly_on_another_ray(cluster, tmp_path):
    """The learner (the head's process) killed outright mid-run: Ray removes its actors from the
    cluster; ``--resume RUN --ray-address ''`` continues it on a Ray of its own (another cluster)
    from the last latest.pt and ends with exactly the parameters of an undisturbed run."""
    c, _ = cluster
    over = {"runner": "ray", "ray_address": c.address, "workers": 2, "n_envs": 4, "n_steps": 256, "batch_size": 512,
            "n_epochs": 2, "norm_obs": True, "norm_reward": True, "eval_every": 2048, "eval_episodes": 1,
            "final_eval_episodes": 1}
    full = train("ppo", "CartPole-v1", steps=8192, seed=2, out=tmp_path / "full", quiet=True, tensorboard=False,
                 overrides=over)
    sets = [f"{k}={v}" for k, v in over.items() if k not in ("runner", "ray_address")]
    cmd = [sys.executable, "-m", "contrl", "train", "ppo", "--env", "CartPole-v1", "--steps", "8192", "--seed", "2",
           "--out", str(tmp_path / "part"), "--runner", "ray", "--ray-address", c.address, "--quiet",
           "--no-tensorboard", "--set", *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt, deadline = tmp_path / "part" / "checkpoints" / "latest.pt", time.monotonic() + 240
    while _step(ckpt) < 4096 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no clean stop, no checkpoint of its own
    proc.wait()
    assert 4096 <= _step(ckpt) < 8192, _step(ckpt)
    for _ in range(100):  # Ray removes a dead driver's actors
        if not _contrl_actors(c.address):
            break
        time.sleep(0.2)
    assert _contrl_actors(c.address) == []
    resumed = train(resume=tmp_path / "part", overrides={"ray_address": ""}, quiet=True, tensorboard=False)
    assert resumed.summary["steps"] == 8192
    assert json.loads((tmp_path / "part" / "config.json").read_text())["ray_address"] == ""
    a = torch.cat([p.flatten() for p in full.model.parameters()])
    b = torch.cat([p.flatten() for p in resumed.model.parameters()])
    assert torch.equal(a, b)


def _step(ckpt) -> int:
    """The step of a latest.pt (0 while there is none)."""
    try:
        return json.loads(torch.load(ckpt, weights_only=True)["train_state"]["meta"])["step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


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
