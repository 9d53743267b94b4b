"""User-facing errors.

Every problem a user can cause (bad flags, bad files, bad environments) is raised as a
:class:`ContrlError` whose message is one line naming the problem and the fix. The CLI prints
it without a traceback and exits non-zero. Library code validates with exceptions, never
``assert`` (``python -O`` strips asserts).
"""

import signal


class ContrlError(Exception):
    """A problem caused by the input, reported as one line: what is wrong and how to fix it."""

    exit_code = 2


class Interrupted(Exception):
    """Training stopped by Ctrl-C (or SIGTERM) after saving a checkpoint."""

    def __init__(self, run_dir, step: int, signum: int = signal.SIGINT):
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{what} at step {step:,}; checkpoint saved. Resume with: contrl train --resume {run_dir}")
        self.run_dir, self.step, self.exit_code = run_dir, step, 128 + signum


def checkpoint_kept(run_dir) -> str:
    """How a run that stops on an error ends its one line: where its last checkpoint is."""
    ckpt = run_dir / "checkpoints" / "latest.pt"
    if not ckpt.exists():
        return "no checkpoint was saved yet"
    return (f"the last checkpoint is kept in {ckpt.parent}; fix the cause and resume with "
            f"contrl train --resume {run_dir}")
