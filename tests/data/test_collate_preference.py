"""Collators of the preference and RL stages: exact padding, attention masks and -100 labels."""

import torch

from lmforge.data.encoding.collate import KTOCollator, PairCollator, PromptCollator

PAD = 99
X = -100  # IGNORE_INDEX


def test_pair_collator_stacks_chosen_then_rejected_right_padded():
    features = [
        {"chosen_input_ids": [5, 6, 7], "chosen_labels": [X, 6, 7],
         "rejected_input_ids": [5, 8], "rejected_labels": [X, 8]},
        {"chosen_input_ids": [9, 10], "chosen_labels": [X, 10],
         "rejected_input_ids": [9, 11, 12, 13], "rejected_labels": [X, X, 12, 13]},
    ]  # fmt: skip
    batch = PairCollator(pad_token_id=PAD)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, PAD],  # chosen 0
        [9, 10, PAD, PAD],  # chosen 1
        [5, 8, PAD, PAD],  # rejected 0
        [9, 11, 12, 13],  # rejected 1
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
    ]
    assert batch["labels"].tolist() == [
        [X, 6, 7, X],
        [X, 10, X, X],
        [X, 8, X, X],
        [X, X, 12, 13],
    ]
    assert all(v.dtype == torch.long for v in batch.values())


def test_kto_collator_stacks_the_samples_then_their_kl_rows():
    # The KL rows (each prompt with another record's answer) come made by the encoding
    # (add_kl_completions); the collator puts them after the samples, in the same order.
    features = [
        {"input_ids": [1, 2, 3], "labels": [X, X, 3], "kto_label": True,
         "kl_input_ids": [1, 2, 5, 6, 7], "kl_labels": [X, X, 5, 6, 7]},
        {"input_ids": [4, 5, 6, 7], "labels": [X, 5, 6, 7], "kto_label": 0,
         "kl_input_ids": [4, 9], "kl_labels": [X, 9]},
        {"input_ids": [8, 8, 8, 9], "labels": [X, X, X, 9], "kto_label": 1,
         "kl_input_ids": [8, 8, 8, 3], "kl_labels": [X, X, X, 3]},
    ]  # fmt: skip
    batch = KTOCollator(pad_token_id=PAD)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "desirable"}
    # rows 0-2: the samples; rows 3-5: their KL rows
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, PAD, PAD],
        [4, 5, 6, 7, PAD],
        [8, 8, 8, 9, PAD],
        [1, 2, 5, 6, 7],
        [4, 9, PAD, PAD, PAD],
        [8, 8, 8, 3, PAD],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],
    ]
    assert batch["labels"].tolist() == [
        [X, X, 3, X, X],
        [X, 5, 6, 7, X],
        [X, X, X, 9, X],
        [X, X, 5, 6, 7],
        [X, 9, X, X, X],
        [X, X, X, 3, X],
    ]
    assert batch["desirable"].dtype == torch.bool
    assert batch["desirable"].tolist() == [True, False, True]


def test_kto_collator_with_one_sample_keeps_its_other_records_kl_row():
    # batch size 1: the KL row is still another record's answer (it was the sample's own)
    features = [{"input_ids": [1, 2, 3], "labels": [X, X, 3], "kto_label": False,
                 "kl_input_ids": [1, 2, 7, 7], "kl_labels": [X, X, 7, 7]}]  # fmt: skip
    batch = KTOCollator(pad_token_id=PAD)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD], [1, 2, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[X, X, 3, X], [X, X, 7, 7]]
    assert batch["desirable"].tolist() == [False]


def test_prompt_collator_pads_on_the_left():
    features = [{"prompt_ids": [1, 2, 3], "index": 7}, {"prompt_ids": [4], "index": 2}]
    batch = PromptCollator(pad_token_id=PAD)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [PAD, PAD, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["index"].tolist() == [7, 2]
    assert batch["rows"] is features
