"""Instructions per training iteration, counted by callgrind: a deterministic A/B for small costs.

    python benchmarks/instructions.py --a /path/to/before/.venv/bin/python --b .venv/bin/python
    python benchmarks/instructions.py --a ... --b ... --algo a2c --iterations 20 100

Wall-clock steps/s on these shared machines spread by +-10% from run to run, too much to see a
cost of 1-2%. Instruction counts do not depend on the machine's load: each side runs K1 and K2
iterations (collect a rollout with the synchronous runner's acting loop, then the rule's update;
LunarLander-v3, 8 envs, fixed seeds, so both sides compute the same thing) under
``valgrind --tool=callgrind``, and (count(K2) - count(K1)) / (K2 - K1) is one iteration without
the start-up. Needs valgrind; slow (a few minutes per side).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile

ITERATE = """
import sys, torch
from contrl.config import build_config
from contrl.agent import Agent, build_model
from contrl.algos import make_rule
from contrl.envs.vec import VecEnv
from contrl.runners.collect import collect
torch.set_num_threads(1)
torch.manual_seed(0)
algo, k = sys.argv[1], int(sys.argv[2])
values = {"n_steps": 256, "batch_size": 256, "n_epochs": 4} if algo == "ppo" else {"n_steps": 5}
cfg = build_config(algo, "LunarLander-v3", overrides={"n_envs": 8, **values})
venv = VecEnv(cfg.env, cfg.env_kwargs, list(range(8)))
model = build_model(cfg, venv.observation_space, venv.action_space)
agent = Agent(cfg, model, venv.observation_space, venv.action_space)
rule = make_rule(cfg, model, 8)
rollout, gen, state = rule.new_rollout(8), torch.Generator().manual_seed(0), model.initial_state(8)
for _ in range(k):
    collect(agent, venv, rollout, gen, None, None, state)
    rule.update(rollout, gen)
print("checksum", float(sum(p.detach().double().sum() for p in model.parameters())))
"""


def count(python: str, algo: str, k: int) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as d:
        script = f"{d}/iterate.py"
        with open(script, "w") as f:
            f.write(ITERATE)
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out", python, script,
                            algo, str(k)], capture_output=True, text=True, cwd=d, check=True)
    refs = int(re.search(r"refs:\s+([\d,]+)", p.stderr).group(1).replace(",", ""))
    return refs, p.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="Python of installation A (before)")
    ap.add_argument("--b", required=True, help="Python of installation B (after)")
    ap.add_argument("--algo", default="ppo", choices=["ppo", "a2c"])
    ap.add_argument("--iterations", type=int, nargs=2, default=[2, 6], metavar=("K1", "K2"))
    args = ap.parse_args()
    k1, k2 = args.iterations
    per = {}
    for side in ("a", "b"):
        (c1, _), (c2, checksum) = (count(getattr(args, side), args.algo, k) for k in (k1, k2))
        per[side] = (c2 - c1) / (k2 - k1)
        print(f"{side.upper()}: {per[side] / 1e6:,.2f} M instructions per iteration ({checksum})", flush=True)
    print(f"B / A: {per['b'] / per['a']:.4f}")
    if sys.stdout.isatty():
        print("(the checksums must match: both sides computed the same thing)")


if __name__ == "__main__":
    main()
