"""PPO with a reward model from stage rm (Ouyang et al., 2022; the TRL 0.x recipe).

One completion per prompt, scored by the reward model (plus any reward_funcs); per-token
rewards are the KL penalty to the reference plus the score at the last token; a critic (a value
head on the policy's hidden states, trained with it) gives GAE advantages; the clipped policy and value losses are
optimised `ppo_epochs` times over each batch of rollouts. Policy and critic are one module
(ModelWithValueHead); the critic is saved beside the adapter as critic_head.safetensors (not
value_head: this folder is no reward model).
"""

from __future__ import annotations

import torch

from lmforge.train.losses.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    masked_mean,
    masked_whiten,
    token_rewards,
)
from lmforge.train.rewards.functions import RewardTerm, score_terms
from lmforge.train.trainers.ppo_control import AdaptiveKL, RunningMoments
from lmforge.train.trainers.rollout import completion_logps, sample_completions
from lmforge.train.trainers.rollout_base import Rollout, RolloutTrainer
from lmforge.train.trainers.value_head import (
    CRITIC_FILE,
    ModelWithValueHead,
    ValueHead,
    ValueHeadTrainerMixin,
)

__all__ = ["CRITIC_FILE", "PPOTrainer", "new_critic", "with_critic"]


def new_critic(hidden_size: int) -> ValueHead:
    """Zero-initialised, so every value starts at 0 (no random baseline at step 1)."""
    head = ValueHead(hidden_size)
    torch.nn.init.zeros_(head.summary.weight)
    torch.nn.init.zeros_(head.summary.bias)
    return head


def with_critic(model) -> ModelWithValueHead:
    """The policy and a fresh critic as one module, the model PPOTrainer trains."""
    hidden = model.config.get_text_config().hidden_size
    return ModelWithValueHead(model, new_critic(hidden), head_file=CRITIC_FILE)


class PPOTrainer(ValueHeadTrainerMixin, RolloutTrainer):
    """The model is a ModelWithValueHead (see with_critic): policy and critic are trained, kept
    in sync across processes and checkpointed together."""

    def __init__(self, *args, reward_terms: list[RewardTerm], **kwargs):
        super().__init__(*args, **kwargs)
        self.reward_terms = reward_terms
        self.kl_coef = AdaptiveKL(self.settings.kl_coef, self.settings.kl_target)
        self.score_moments = RunningMoments()

    def checkpoint_state(self) -> dict:
        return {"kl_coef": self.kl_coef.state(), "score_moments": self.score_moments.state()}

    def restore_checkpoint_state(self, state: dict) -> None:
        if "kl_coef" in state:
            self.kl_coef.restore(state["kl_coef"])
            self.score_moments.restore(state["score_moments"])

    def _normalised(self, scores: torch.Tensor) -> torch.Tensor:
        """ppo_score_norm: by the running moments of every process's scores so far (this
        batch's included); ppo_whiten_rewards: then within the batch."""
        if self.settings.score_norm:
            self.score_moments.update(self.accelerator.gather(scores).tolist())
            moments = self.score_moments
            scores = (scores - moments.mean) / (moments.std + torch.finfo(scores.dtype).eps)
        if self.settings.whiten_rewards:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        return scores

    def make_rollout(self, model, inputs: dict) -> Rollout:
        settings = self.settings
        seqs = sample_completions(
            self.policy(model),
            inputs["input_ids"],
            inputs["attention_mask"],
            num_generations=1,
            max_new_tokens=settings.max_completion_length,
            stop_ids=self.stop_ids,
            pad_token_id=self.processing_class.pad_token_id,
        )
        batch = self.reward_batch(inputs["rows"], seqs, 1)
        device = seqs.input_ids.device
        totals, per_term = score_terms(self.reward_terms, batch)
        raw_scores = torch.tensor(totals, dtype=torch.float32, device=device)
        scores = self._normalised(raw_scores)
        mask = seqs.completion_mask
        with torch.no_grad():
            old_logps, old_values = completion_logps(model, seqs, with_values=True)
            old_values = old_values * mask
            ref_logps = self.reference_logps(model, seqs)
        kl_coef = self.kl_coef.value  # this batch's; then adapted to its KL (ppo_target)
        rewards, kl = token_rewards(scores, old_logps, ref_logps, mask, kl_coef)
        if settings.kl_target is not None:
            kls = self.accelerator.gather(kl.sum(-1))
            self.kl_coef.update(float(kls.mean()), kls.numel())
        advantages, returns = gae(rewards, old_values, mask, settings.gamma, settings.lam)
        metrics = {
            "score": raw_scores,
            **(
                {f"rewards/{k}": torch.tensor(v) for k, v in per_term.items()}
                if len(per_term) > 1
                else {}
            ),
            "reward": rewards.sum(-1),  # score minus the KL penalty, per completion
            "kl": kl.sum(-1),
            "kl_coef": torch.tensor(kl_coef),
            "value_mean": masked_mean(old_values, mask),
            **self.length_metrics(seqs),
        }
        return Rollout(
            seqs,
            masked_whiten(advantages, mask),
            old_logps,
            ref_logps,
            old_values=old_values,
            returns=returns,
            metrics=metrics,
        )

    def rollout_loss(self, model, rollout: Rollout) -> tuple[torch.Tensor, dict]:
        settings, mask = self.settings, rollout.seqs.completion_mask
        logps, values = completion_logps(model, rollout.seqs, with_values=True)
        policy_tokens, clipped = clipped_policy_loss(
            logps, rollout.old_logps, rollout.advantages, settings.clip
        )
        policy_loss = masked_mean(policy_tokens, mask)
        value_loss = clipped_value_loss(
            values, rollout.old_values, rollout.returns, mask, settings.value_clip
        )
        loss = policy_loss + settings.vf_coef * value_loss
        metrics = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "clip_ratio": masked_mean(clipped, mask).detach(),
            "approx_kl": masked_mean(0.5 * (logps.detach() - rollout.old_logps) ** 2, mask),
        }
        return loss, metrics
