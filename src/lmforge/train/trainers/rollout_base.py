"""What PPO and GRPO share: a transformers Trainer whose loss starts with a rollout.

Each training step takes a batch of prompts, samples completions from the policy, scores them
and computes the RL loss; everything else (optimizer, schedule, gradient accumulation, logging
callbacks, atomic checkpoints, resume, saving the adapter) is the Trainer's, as in every other
stage. With `ppo_epochs > 1` the sampler repeats the prompts of each optimizer step that many
times in a row and the rollout is reused, so one batch of rollouts is optimised several times
(the old log-probabilities and the clipped ratio then matter).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from lmforge.train.rewards.functions import RewardBatch
from lmforge.train.trainers.base import AtomicCheckpointTrainer
from lmforge.train.trainers.preference import _MetricsMixin
from lmforge.train.trainers.reference import prepared_reference, reference_model
from lmforge.train.trainers.rollout import RepeatedChunkSampler, Sequences, completion_logps
from lmforge.train.trainers.value_head import body_of


@dataclass
class RLSettings:
    num_generations: int  # completions per prompt (GRPO's group; PPO uses 1)
    max_completion_length: int
    epochs: int  # optimisation passes over each batch of rollouts (ppo_epochs)
    clip: float  # policy ratio clipping (ppo_clip)
    kl_coef: float  # weight of the KL to the reference (ppo_kl_coef)
    whiten_rewards: bool = False  # PPO: normalise scores within the batch
    score_norm: bool = False  # PPO: normalise scores by running moments (ppo_score_norm)
    kl_target: float | None = None  # PPO: adapt kl_coef toward this KL (ppo_target)
    gamma: float = 1.0  # PPO: discount
    lam: float = 0.95  # PPO: GAE lambda
    vf_coef: float = 0.1  # PPO: weight of the value loss
    value_clip: float = 0.2  # PPO: clipping range of the value update


@dataclass
class Rollout:
    seqs: Sequences
    advantages: torch.Tensor  # [N] (GRPO) or [N, T] (PPO)
    old_logps: torch.Tensor | None = None  # policy at sampling time; None: on-policy (detach)
    ref_logps: torch.Tensor | None = None
    old_values: torch.Tensor | None = None  # PPO critic at sampling time
    returns: torch.Tensor | None = None  # PPO value targets
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class RolloutTrainer(_MetricsMixin, AtomicCheckpointTrainer):
    def __init__(
        self,
        *args,
        settings: RLSettings,
        stop_ids: list[int],
        ref_model: torch.nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.settings, self.stop_ids = settings, stop_ids
        self.ref_model = prepared_reference(self, ref_model)
        self._rollouts: OrderedDict[tuple, list] = OrderedDict()  # key -> [rollout, uses]

    # -- subclasses --------------------------------------------------------------------------

    def make_rollout(self, model, inputs: dict) -> Rollout:
        raise NotImplementedError

    def rollout_loss(self, model, rollout: Rollout) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    # -- the step ----------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # One optimizer step's prompts over all processes: batches are dealt round-robin to
        # the processes, so each one sees its own share again on every repeat.
        args = self.args
        chunk = args.per_device_train_batch_size * args.gradient_accumulation_steps
        chunk *= max(args.world_size, 1)
        shuffle = args.train_sampling_strategy != "sequential"  # disable_shuffling
        return RepeatedChunkSampler(
            len(dataset), chunk, self.settings.epochs, args.seed, shuffle=shuffle
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rollout = self._rollout(model, inputs)
        loss, metrics = self.rollout_loss(model, rollout)
        self._store("", metrics)
        self._count_tokens(rollout, inputs)
        return (loss, {}) if return_outputs else loss

    def _rollout(self, model, inputs: dict) -> Rollout:
        key = tuple(inputs["index"].tolist())
        cached = self._rollouts.get(key)
        if cached is not None and cached[1] < self.settings.epochs:
            cached[1] += 1
            return cached[0]
        # Sampling, old and reference log-probabilities and scores run outside the trainer's
        # forward: under its autocast here, so that they compute as the training forward does
        # (and frozen bf16 layers meet trained fp32 ones under mixed precision).
        with self.accelerator.autocast():
            rollout = self.make_rollout(model, inputs)
        self._store("", rollout.metrics)  # once per rollout, not once per epoch over it
        if self.settings.epochs > 1:
            self._rollouts[key] = [rollout, 1]
            self._rollouts.move_to_end(key)
            while len(self._rollouts) > self.args.gradient_accumulation_steps:
                self._rollouts.popitem(last=False)
        return rollout

    def _count_tokens(self, rollout: Rollout, inputs: dict) -> None:
        """The Trainer counted the prompt tokens; add the rest of what was trained on."""
        if self.args.include_num_input_tokens_seen == "no":
            return
        extra = rollout.seqs.attention_mask.sum() - inputs["attention_mask"].sum()
        self.state.num_input_tokens_seen += int(extra.item())

    # -- helpers -----------------------------------------------------------------------------

    def policy(self, model):
        """The causal LM being trained, unwrapped from DDP/DeepSpeed (without PPO's value
        head): it samples, and with its adapters disabled it is the reference."""
        return body_of(self.accelerator.unwrap_model(model))

    @torch.no_grad()
    def reference_logps(self, model, seqs: Sequences) -> torch.Tensor:
        with reference_model(self.policy(model), self.ref_model) as reference:
            return completion_logps(reference, seqs)[0]

    def reward_batch(self, rows: list[dict], seqs: Sequences, repeats: int) -> RewardBatch:
        """Rows repeated for their completions, and the completions as text (without the stop
        token, without special tokens)."""
        tokenizer = self.processing_class
        ids = seqs.completion_lists()
        texts = [
            tokenizer.decode(
                c[:-1] if c and c[-1] in self.stop_ids else c, skip_special_tokens=True
            )
            for c in ids
        ]
        expanded = [row for row in rows for _ in range(repeats)]
        names = {name for row in expanded for name in row["columns"]}
        columns = {name: [row["columns"].get(name) for row in expanded] for name in sorted(names)}
        return RewardBatch(
            prompts=[row["prompt"] for row in expanded],
            completions=texts,
            completion_ids=ids,
            references=[row["reference"] for row in expanded],
            columns=columns,
            conversations=[row["conversation"] for row in expanded],
        )

    @staticmethod
    def length_metrics(seqs: Sequences) -> dict[str, torch.Tensor]:
        return {
            "completion_length": seqs.completion_mask.sum(-1),
            "completions_ended": seqs.ended.float(),
        }
