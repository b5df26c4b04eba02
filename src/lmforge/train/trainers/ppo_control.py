"""What PPO keeps across steps besides the model (TRL 0.x's, which LLaMA-Factory's PPO runs on):
the adaptive KL coefficient (`ppo_target`) and the running moments that normalise scores
(`ppo_score_norm`). Each is saved with every checkpoint, so a resumed run continues with the
same coefficient and statistics."""

from __future__ import annotations

import math

# TRL's AdaptiveKLController: how many completions it takes the coefficient to move by its
# largest step (20 %) at most.
KL_HORIZON = 10_000
KL_MAX_ERROR = 0.2


class AdaptiveKL:
    """The KL coefficient: fixed, or (with a target) multiplied after each batch by
    1 + clip(kl / target - 1, -0.2, 0.2) * completions / horizon (Ziegler et al., 2019)."""

    def __init__(self, value: float, target: float | None = None):
        self.value, self.target = value, target

    def update(self, kl: float, completions: int) -> None:
        """`kl`: the batch's mean KL per completion (summed over its tokens)."""
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -KL_MAX_ERROR), KL_MAX_ERROR)
        self.value *= 1 + error * completions / KL_HORIZON

    def state(self) -> dict:
        return {"value": self.value}

    def restore(self, state: dict) -> None:
        self.value = float(state["value"])


class RunningMoments:
    """Mean and standard deviation of every value seen so far, updated a batch at a time with
    the parallel-variance formula (TRL's RunningMoments: it starts at mean 0, variance 1 and a
    count of 1e-24, so the first batch sets them)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    @property
    def std(self) -> float:
        """The unbiased standard deviation (n / (n - 1) times the variance)."""
        return math.sqrt(self.var * self.count / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, values: list[float]) -> None:
        n = len(values)
        if n == 0:
            return
        batch_mean = sum(values) / n
        batch_var = sum((v - batch_mean) ** 2 for v in values) / n
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (
            self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        ) / total
        self.mean += delta * n / total
        self.count = total

    def state(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def restore(self, state: dict) -> None:
        self.mean, self.var, self.count = (float(state[k]) for k in ("mean", "var", "count"))
