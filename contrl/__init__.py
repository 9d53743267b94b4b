"""contrl: actor-critic agents (PPO, ...) for Gymnasium control tasks, fast on a CPU."""

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Train an agent; see :func:`contrl.api.train`."""
    from contrl.api import train as _train

    return _train(*args, **kwargs)


def load(path, prefer: str = "best"):
    """Load an agent from a run folder or checkpoint; see :func:`contrl.agent.load`."""
    from contrl.agent import load as _load

    return _load(path, prefer)
