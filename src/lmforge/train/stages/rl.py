"""What the ppo and grpo stages share: checks before any model loads, prompts from the data,
the rewards, the reference model and the trainer settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.config.schema import Config
from lmforge.data.encoding.collate import PromptCollator
from lmforge.data.sources.mixing import explicit_val_size
from lmforge.errors import UserError
from lmforge.model.load import Quantization
from lmforge.train.rewards.functions import RewardTerm, build_reward_terms
from lmforge.train.rewards.reward_model import RewardModelScorer, check_reward_model_dir
from lmforge.train.stages.base import Stage, StageData, StageInputs, encode_stage_samples
from lmforge.train.trainers.reference import load_reference_model
from lmforge.train.trainers.rollout import prompt_row, record_columns
from lmforge.train.trainers.rollout_base import RLSettings


def check_rl_config(config: Config) -> list[RewardTerm]:
    """Every check on the user's settings, before any model loads; returns the reward terms
    of `reward_funcs` (imported now, so a wrong module:function fails here)."""
    method, data, train, where = config.method, config.data, config.train, config.source
    stage = method.stage
    if stage == "grpo" and method.num_generations < 2:
        raise UserError(
            f"num_generations: {method.num_generations} leaves GRPO nothing to compare: each "
            "completion's advantage is its reward relative to the others of its group",
            where=where,
            fix="set num_generations: 2 or more (4-8 is usual)",
        )
    for key in ("max_completion_length", "ppo_epochs"):
        if getattr(method, key) < 1:
            raise UserError(f"`{key}: {getattr(method, key)}` must be at least 1", where=where)
    if data.cutoff_len <= method.max_completion_length:
        raise UserError(
            f"cutoff_len ({data.cutoff_len}) leaves no room for the prompt once "
            f"max_completion_length ({method.max_completion_length}) tokens are reserved for "
            "the completion",
            where=where,
            fix=f"raise cutoff_len above {method.max_completion_length} or lower "
            "max_completion_length",
        )
    for key in ("ppo_target", "ppo_score_norm"):
        if stage == "grpo" and getattr(method, key):
            raise UserError(
                f"{key} is PPO's: GRPO normalises rewards within each group of completions and "
                "keeps its KL weight (ppo_kl_coef) fixed",
                where=config.where(key),
                fix=f"remove {key}, or use stage: ppo",
            )
    if stage == "ppo" and method.ppo_whiten_rewards and train.per_device_train_batch_size < 2:
        raise UserError(
            "ppo_whiten_rewards normalises scores within a batch, and a batch of 1 has nothing "
            "to normalise against (every score would become 0)",
            where=where,
            fix="set per_device_train_batch_size: 2 or more, or ppo_whiten_rewards: false",
        )
    if explicit_val_size(data.val_size) > 0 or data.eval_dataset:  # `auto`: no split here
        raise UserError(
            f"stage {stage} does not evaluate during training (there is no eval loss for "
            "sampled completions)",
            where=where,
            fix="remove val_size / eval_dataset",
        )
    if method.reward_model:
        check_reward_model_dir(method.reward_model, where)
    return build_reward_terms(method, where)


def encode_prompts(config: Config, setup) -> StageData:
    """Samples -> prompt rows (see rollout.prompt_row), numbered for the rollout cache."""
    method = config.method
    records = record_columns(config.data, method.stage)
    budget = config.data.cutoff_len - method.max_completion_length

    def encode(sample):
        record = records.get((sample.source_file, sample.record_index))
        return prompt_row(
            sample,
            setup.template,
            setup.tokenizer,
            prompt_budget=budget,
            answer_column=method.answer_column,
            record=record,
        )

    data = encode_stage_samples(config, setup, encode, "prompts")
    train, evaluation, report = data.train, data.eval, data.report
    for part in (train, evaluation):
        for index, row in enumerate(part):
            row["index"] = index
    report.tokens = sum(len(row["prompt_ids"]) for row in train + evaluation)
    report.train_rows = len(train) * method.ppo_epochs  # each step's prompts come back
    report.notes.append(
        f"{method.stage}: prompts only; up to {method.max_completion_length} tokens are "
        "generated per completion (a longer prompt keeps its end)"
    )
    return data


def rl_settings(config: Config, num_generations: int) -> RLSettings:
    method = config.method
    return RLSettings(
        num_generations=num_generations,
        max_completion_length=method.max_completion_length,
        epochs=method.ppo_epochs,
        clip=method.ppo_clip,
        kl_coef=method.ppo_kl_coef,
        whiten_rewards=method.ppo_whiten_rewards,
        score_norm=method.ppo_score_norm,
        kl_target=method.ppo_target,
    )


@dataclass(frozen=True)
class RolloutParts:
    """What PPO's and GRPO's trainers take besides transformers' own arguments."""

    collator: PromptCollator
    ref_model: torch.nn.Module | None
    stop_ids: list[int]
    reward_terms: list[RewardTerm]


def rollout_parts(inputs: StageInputs, *, needs_reference: bool) -> RolloutParts:
    """Collator, reference model (of the model as given: before any critic is added), stop
    tokens, and the rewards, with the reward model's term when one is configured."""
    config = inputs.config
    terms = build_reward_terms(config.method, config.source)
    if config.method.reward_model:
        precision = inputs.plan.precision
        scorer = RewardModelScorer(
            config.method.reward_model,
            config.data,
            dtype=precision.frozen_model_dtype,
            trust_remote_code=config.model.trust_remote_code,
            quantization=Quantization.of_frozen(
                config.method.reward_model_quantization_bit, config.method, precision.compute_dtype
            ),
        ).to(inputs.args.device)
        terms.append(RewardTerm("reward_model", scorer.score))
    tokenizer = inputs.setup.tokenizer
    return RolloutParts(
        collator=PromptCollator(tokenizer.pad_token_id),
        ref_model=load_reference_model(inputs) if needs_reference else None,
        stop_ids=inputs.setup.template.stop_token_ids(tokenizer),
        reward_terms=terms,
    )


class RolloutStage(Stage):
    """Base of the ppo and grpo stages: prompts in, completions sampled during training."""

    def check(self, config: Config) -> None:
        check_rl_config(config)

    def datasets(self, config: Config, setup) -> StageData:
        self.check(config)  # before the model loads, whoever calls us
        return encode_prompts(config, setup)
