"""The baseline: LoRA SFT with plain transformers Trainer + peft, as a tutorial would write it.

Gemma chat format written out by hand (the same tokens as lmforge's and LLaMA-Factory's `gemma`
template), the prompt masked with -100, batches padded to their longest sample, and the model's
own causal-LM loss (full logits over the vocabulary for every position).

    python plain_train.py --model DIR --data data.json --output-dir OUT [--bf16] [--max-steps 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)

IGNORE_INDEX = -100
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encode(record: dict, tokenizer, cutoff: int) -> dict:
    user = (record["instruction"] + "\n" + record["input"]).strip()
    prompt = f"<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"
    answer = record["output"].strip() + "<end_of_turn>\n"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + answer_ids)[:cutoff]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:cutoff]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    records = json.loads(args.data.read_text())
    train_set = [encode(r, tokenizer, args.cutoff) for r in records]

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lora = LoraConfig(
        r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
        target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(model, lora)

    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        bf16=args.bf16,
        seed=args.seed,
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX),
    )
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main()
