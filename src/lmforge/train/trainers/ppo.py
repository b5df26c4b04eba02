"""PPO with a reward model from stage rm (Ouyang et al., 2022; the TRL 0.x recipe).

One completion per prompt, scored by the reward model (plus any reward_funcs); per-token rewards are the KL penalty to
the reference plus the score at the last token; a critic (a value head on the policy's hidden
states, trained with it) gives GAE advantages; the clipped policy and value losses are
optimised `ppo_epochs` times over each batch of rollouts. The critic is saved beside the
adapter as critic_head.safetensors (not value_head: this folder is no reward model).
"""

from __future__ import annotations

import torch

from lmforge.train.trainers.preference import ValueHead
from lmforge.train.rewards.functions import RewardTerm, score_terms
from lmforge.train.losses.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    masked_mean,
    masked_whiten,
    token_rewards,
)
from lmforge.train.trainers.rollout_base import Rollout, RolloutTrainer
from lmforge.train.trainers.rollout import completion_logps, reference_logps, sample_completions

CRITIC_FILE = "critic_head.safetensors"


def new_critic(hidden_size: int) -> ValueHead:
    """Zero-initialised, so every value starts at 0 (no random baseline at step 1)."""
    head = ValueHead(hidden_size)
    torch.nn.init.zeros_(head.summary.weight)
    torch.nn.init.zeros_(head.summary.bias)
    return head


class PPOTrainer(RolloutTrainer):
    def __init__(self, *args, reward_terms: list[RewardTerm], critic: ValueHead, **kwargs):
        super().__init__(*args, **kwargs)
        self.reward_terms, self.critic = reward_terms, critic
        self.critic.to(self.args.device)

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        head = [p for p in self.critic.parameters() if id(p) not in known]
        if head:
            optimizer.add_param_group({"params": head, "weight_decay": 0.0})
        return optimizer

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.critic(hidden.to(self.critic.summary.weight.dtype)).float()

    def make_rollout(self, model, inputs: dict) -> Rollout:
        settings, policy = self.settings, self.unwrapped(model)
        seqs = sample_completions(
            policy,
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
            old_logps, hidden = completion_logps(model, seqs, with_hidden=True)
            old_values = self._values(hidden) * mask
            ref_logps = reference_logps(policy, self.ref_model, seqs)
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
        logps, hidden = completion_logps(model, rollout.seqs, with_hidden=True)
        values = self._values(hidden)
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

    # -- the critic is saved with the adapter and restored on resume -------------------------

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        head = {k: v.detach().cpu().contiguous() for k, v in self.critic.state_dict().items()}
        save_file(head, f"{output_dir}/{CRITIC_FILE}")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        self.critic.load_state_dict(load_file(f"{resume_from_checkpoint}/{CRITIC_FILE}"))
