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
        scores = raw_scores
        if settings.whiten_rewards:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        mask = seqs.completion_mask
        with torch.no_grad():
            old_logps, old_values = completion_logps(model, seqs, with_values=True)
            old_values = old_values * mask
            ref_logps = self.reference_logps(model, seqs)
        rewards, kl = token_rewards(scores, old_logps, ref_logps, mask, settings.kl_coef)
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
