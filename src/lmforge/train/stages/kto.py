"""KTO: single answers labelled desirable or undesirable."""

from __future__ import annotations

from lmforge.data.encoding.collate import KTOCollator
from lmforge.data.encoding.encode import add_kl_completions, encode_kto
from lmforge.errors import UserError
from lmforge.train.stages.base import Stage, StageData, StageInputs, encode_stage_samples
from lmforge.train.trainers.preference import KTOTrainer
from lmforge.train.trainers.reference import load_reference_model


def encode_kto_row(config, setup):
    def encode(sample):
        item = encode_kto(sample, setup.template, setup.tokenizer, config.data.cutoff_len)
        if not item.completion_ids:
            return None
        input_ids, labels = item.joined()
        return {
            "input_ids": input_ids,
            "labels": labels,
            "prompt_ids": item.prompt_ids,  # for the KL rows (add_kl_completions), then dropped
            "answer_ids": item.completion_ids,
            "kto_label": bool(item.label),
            "truncated": item.truncated,
            "where": sample.where,  # for the error on a single record, then dropped
        }

    return encode


def pair_kl_rows(config, rows: list[dict], split: str) -> None:
    """Each row's KL row: its prompt with another record's answer (add_kl_completions). A split
    of one record has no other answer; its KL term would be the sample's own reward, so the
    loss would be wrong: refused."""
    wheres = [row.pop("where", "") for row in rows]
    if len(rows) == 1:
        data = config.data
        if split == "train":
            what, fix = "the training data", "add records to the dataset (KTO needs several)"
        elif data.eval_dataset:
            what, fix = "eval_dataset", f"add records to eval_dataset `{data.eval_dataset}`"
        else:
            what, fix = "the evaluation split", "set val_size to 2 or more, or 0 (no evaluation)"
        raise UserError(
            f"stage kto estimates its KL term from each prompt paired with the answer of another "
            f"record, and {what} holds a single record (after encoding)",
            where=wheres[0] or None,
            fix=fix,
        )
    add_kl_completions(rows, config.data.cutoff_len)


class KTOStage(Stage):
    name = "kto"
    prediction_loss_only = True  # evaluation reports losses and rewards, no logits

    def datasets(self, config, setup) -> StageData:
        data = encode_stage_samples(config, setup, encode_kto_row(config, setup), "completions")
        pair_kl_rows(config, data.train, "train")
        pair_kl_rows(config, data.eval or [], "eval")
        return data

    def build_trainer(self, inputs: StageInputs):
        method = inputs.config.method
        collator = KTOCollator(inputs.setup.tokenizer.pad_token_id)
        return KTOTrainer(
            **inputs.trainer_arguments(inputs.model, collator),
            ref_model=load_reference_model(inputs),
            pref_beta=method.pref_beta,
            desirable_weight=method.kto_chosen_weight,
            undesirable_weight=method.kto_rejected_weight,
        )


STAGE = KTOStage()
