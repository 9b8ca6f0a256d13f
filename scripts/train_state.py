"""A resumable training run's state file, shared by the demo's trainers of one part.

One module's weights, the optimizer, the step and the wall-clock seconds spent (the
trainers' learning rates follow the wall-clock budget), written atomically (a session
can end at any moment: a half-written file must never replace a good one), and a stop
flag that SIGINT/SIGTERM raise so the loop saves and exits between steps.
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch

__all__ = ["TrainState"]


class TrainState:
    def __init__(self, path: Path, name: str, module: torch.nn.Module, opt: torch.optim.Optimizer,
                 **extra) -> None:
        self.path, self.name, self.module, self.opt, self.extra = Path(path), name, module, opt, extra
        self.step, self.spent = 0, 0.0
        self.stop = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: setattr(self, "stop", True))

    def resume(self) -> None:
        """Load the file if there is one (the weights into ``module``, the optimizer, step and time)."""
        if not self.path.exists():
            return
        saved = torch.load(self.path, weights_only=False)
        self.module.load_state_dict(saved[self.name])
        self.opt.load_state_dict(saved["opt"])
        self.step, self.spent = saved["step"], saved["spent"]
        print(f"resumed at step {self.step} ({self.spent / 60:.1f} min spent)", flush=True)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({self.name: self.module.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "spent": self.spent, **self.extra}, tmp)
        tmp.replace(self.path)
