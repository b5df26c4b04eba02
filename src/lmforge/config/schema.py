"""The typed configuration: sections by concern, one documented field per key.

Keys are LLaMA-Factory's flat YAML keys, so its users' files load as they are. Each field's
`help` feeds `--help`, the web UI and docs/config.md. A field marked `path` is resolved against
the working directory, or for an input that exists only there, the YAML file's folder. A number field's `bounds` are the values it accepts,
checked when the config is loaded (before any model), and listed in docs/config.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

# Stages and methods that exist today; resolve() names the others as not available yet.
STAGES = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")
FINETUNING_TYPES = ("lora", "oft", "freeze", "full")
ADAPTER_TYPES = ("lora", "oft")  # trained as a peft adapter beside a frozen base
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")  # dpo's pref_loss
REFERENCE_FREE = ("orpo", "simpo")  # these compare the policy's answers without a reference


def trains_adapter(method) -> bool:
    """LoRA or OFT: the run saves a peft adapter, and the base (adapters disabled) is there."""
    return method.finetuning_type in ADAPTER_TYPES


def uses_reference_model(method) -> bool:
    """Whether training compares the model with a reference: dpo (not its reference-free
    losses), kto, ppo, grpo with a KL term, sft with ASFT."""
    stage = method.stage
    if stage == "dpo":
        return method.pref_loss not in REFERENCE_FREE
    if stage == "grpo":
        return method.ppo_kl_coef > 0
    return stage in ("kto", "ppo") or (stage == "sft" and method.use_asft_loss)


def copies_reference_model(method) -> bool:
    """The reference is a frozen copy of the starting model (full/freeze without ref_model)."""
    return uses_reference_model(method) and not method.ref_model and not trains_adapter(method)


@dataclass(frozen=True)
class Bounds:
    """The values a number key accepts: from `low` to `high` (each included unless `*_open`);
    `or_count` also accepts any whole number >= 1 (a share or a count), `nonzero` refuses 0."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    or_count: bool = False
    nonzero: bool = False
    words: tuple[str, ...] = ()  # words accepted besides numbers (val_size: auto)

    def allows(self, value: float) -> bool:
        if isinstance(value, str):  # a word the key accepts besides numbers (`auto`)
            return value in self.words
        if not math.isfinite(value) or (self.nonzero and value == 0):
            return False
        if self.or_count and value >= 1 and float(value).is_integer():
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def describe(self) -> str:
        """The allowed values in words: "greater than 0", "from 0 to 1", ..."""
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            text = {
                (False, False): f"from {low} to {high}",
                (False, True): f"from {low} up to (not including) {high}",
                (True, False): f"greater than {low} and at most {high}",
                (True, True): f"between {low} and {high} (both excluded)",
            }[self.low_open, self.high_open]
        elif self.low is not None:
            text = f"greater than {low}" if self.low_open else f"at least {low}"
        elif self.high is not None:
            text = f"less than {high}" if self.high_open else f"at most {high}"
        else:
            text = "any number"
        if self.nonzero:
            text = "any whole number except 0" if text == "any number" else text + ", not 0"
        if self.or_count:
            text = f"a fraction {text}, or a whole count of at least 1"
        if self.words:
            text += "".join(f", or `{word}`" for word in self.words)
        return text


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


POSITIVE_INT = Bounds(low=1)
ROPE_SCALING_KINDS = ("linear", "dynamic", "yarn", "llama3")
POSITIVE = Bounds(low=0, low_open=True)
NON_NEGATIVE = Bounds(low=0)
SHARE = Bounds(low=0, high=1)  # 0 to 1, both included


def opt(
    default: Any,
    help: str,
    *,
    path: bool = False,
    choices: tuple[str, ...] | None = None,
    bounds: Bounds | None = None,
    secret: bool = False,
):
    """A config field with its one-line doc (and, for some, path resolution, choices, the
    bounds of a number, or `secret`: never written to run_config.yaml)."""
    metadata = {"help": help, "path": path, "choices": choices, "bounds": bounds, "secret": secret}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """Which model to load, and how."""

    model_name_or_path: str | None = opt(
        None,
        "Local folder, Hugging Face hub id, .gguf file, or a name from `lmforge models list`.",
        path=True,
    )
    adapter_name_or_path: str | None = opt(
        None, "LoRA adapter folder(s) to load on top of the model, comma-separated.", path=True
    )
    template: str | None = opt(
        None,
        "Chat template name (e.g. gemma). Default: the model catalogue's template for the model.",
    )
    trust_remote_code: bool = opt(False, "Allow code from the model's folder or hub repo to run.")
    add_tokens: str | None = opt(
        None,
        "Tokens to add to the vocabulary, comma-separated (split like words never again).",
    )
    add_special_tokens: str | None = opt(
        None,
        "Special tokens to add to the vocabulary, comma-separated (e.g. <tool_call>,</tool_call>). "
        "With LoRA their embedding rows train with the adapter.",
    )
    new_special_tokens_config: str | None = opt(
        None,
        "YAML file of `token: description` lines: special tokens to add, and the words whose "
        "embeddings start theirs (init_special_tokens: desc_init).",
        path=True,
    )
    init_special_tokens: str = opt(
        "noise_init",
        "Where added tokens' rows start: noise_init (mean of all rows plus noise), desc_init "
        "(mean of the description's token rows) or desc_init_w_noise.",
        choices=("noise_init", "desc_init", "desc_init_w_noise"),
    )
    resize_vocab: bool = opt(
        False,
        "Grow the embedding to the tokenizer's length when the tokenizer has more tokens than "
        "the model has rows (adding tokens does this by itself).",
    )
    train_from_scratch: bool = opt(
        False,
        "Train from random weights of the model's architecture (its config.json) instead of "
        "its trained weights: pre-training a new model (full fine-tuning only).",
    )
    rope_scaling: str | None = opt(
        None,
        "RoPE scaling for rows longer than the model was trained for: linear, dynamic, yarn or "
        "llama3. Training scales by ceil(cutoff_len / the model's length), and not at all when "
        "cutoff_len fits; inference uses the factor training used (rope_factor).",
        choices=ROPE_SCALING_KINDS,
    )
    rope_factor: float | None = opt(
        None,
        "The RoPE scaling factor (with rope_scaling). Default: in training, from cutoff_len; "
        "at inference, the factor the weights were trained with (1: not scaled), else 2.",
        bounds=Bounds(low=1),
    )
    moe_aux_loss_coef: float | None = opt(
        None,
        "Mixture-of-experts models: train with the router's load-balancing loss, this weight "
        "(e.g. 0.001). Default: as the model's config.json says (usually off).",
        bounds=NON_NEGATIVE,
    )
    model_revision: str = opt("main", "Hub revision (branch, tag or commit) to download.")
    flash_attn: str = opt(
        "auto",
        "Attention implementation: auto, disabled (eager), sdpa or fa2 (flash-attention 2).",
        choices=("auto", "disabled", "sdpa", "fa2"),
    )
    infer_dtype: str = opt(
        "auto",
        "Dtype for inference: auto, float32, float16 or bfloat16. auto: bf16 where the device "
        "computes it natively (GPU or CPU), fp16 on a GPU without bf16, else fp32.",
        choices=("auto", "float32", "float16", "bfloat16"),
    )


@dataclass
class MethodConfig:
    """What kind of training, and which parameters learn."""

    stage: str = opt(
        "sft",
        "Training stage: pt (pre-training), sft, rm (reward model), dpo (and ORPO/SimPO via "
        "pref_loss), kto, ppo or grpo.",
        choices=STAGES,
    )
    finetuning_type: str = opt(
        "lora",
        "lora, oft (orthogonal fine-tuning), freeze (train the last layers) or full.",
        choices=FINETUNING_TYPES,
    )
    lora_rank: int = opt(8, "LoRA rank r.", bounds=POSITIVE_INT)
    lora_alpha: int | None = opt(None, "LoRA alpha. Default: 2 x lora_rank.", bounds=POSITIVE_INT)
    lora_dropout: float = opt(
        0.0, "Dropout on the LoRA branch.", bounds=Bounds(low=0, high=1, high_open=True)
    )
    lora_target: str = opt(
        "all", "Modules that get LoRA: `all` linear layers, or comma-separated module names."
    )
    freeze_trainable_layers: int = opt(
        2,
        "freeze: number of trainable layers; n>0 the last n, n<0 the first |n|.",
        bounds=Bounds(nonzero=True),
    )
    freeze_trainable_modules: str = opt(
        "all",
        "freeze: modules trained inside the trainable layers: `all` or comma-separated names.",
    )
    freeze_extra_modules: str | None = opt(
        None, "freeze: extra modules outside the layers to train too, e.g. embed_tokens,norm."
    )
    use_llama_pro: bool = opt(
        False,
        "LLaMA Pro: train only the layers `lmforge models expand` added to the model "
        "(freeze_trainable_layers: how many it added; freeze or lora).",
    )
    oft_rank: int = opt(
        0,
        "oft: number of orthogonal blocks per layer (0: set by oft_block_size).",
        bounds=NON_NEGATIVE,
    )
    oft_block_size: int = opt(
        32, "oft: size of each orthogonal block (0: set by oft_rank).", bounds=NON_NEGATIVE
    )
    oft_target: str = opt(
        "all", "oft: modules that get OFT: `all` linear layers, or comma-separated module names."
    )
    module_dropout: float = opt(
        0.0,
        "oft: dropout of whole OFT blocks in training.",
        bounds=Bounds(low=0, high=1, high_open=True),
    )
    additional_target: str | None = opt(
        None,
        "lora/oft: modules trained fully and saved with the adapter, e.g. embed_tokens,lm_head.",
    )
    use_rslora: bool = opt(False, "lora: rank-stabilised scaling alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = opt(False, "lora: weight-decomposed LoRA (DoRA).")
    pissa_init: bool = opt(False, "lora: initialise from the principal singular vectors (PiSSA).")
    pissa_iter: int = opt(
        16,
        "lora: with pissa_init, the fast-SVD iterations (-1: the full SVD). A fast-SVD adapter "
        "is saved converted to plain LoRA (docs/architecture.md, PiSSA).",
        bounds=Bounds(low=-1),
    )
    pissa_convert: bool = opt(
        False,
        "lora: with pissa_init, save the final adapter converted to plain LoRA of twice the "
        "rank (loads on the original base without an SVD; always done after a fast SVD).",
    )
    loraplus_lr_ratio: float | None = opt(
        None,
        "lora: LoRA+; the B matrices learn this many times faster than A (e.g. 16).",
        bounds=POSITIVE,
    )
    loraplus_lr_embedding: float = opt(
        1e-6,
        "lora: with loraplus_lr_ratio, the learning rate of an embedding adapter's B matrix "
        "(lora_target naming embed_tokens), as in LLaMA-Factory.",
        bounds=NON_NEGATIVE,
    )
    use_galore: bool = opt(
        False,
        "full: GaLore, AdamW on low-rank projections of the hidden layers' gradients "
        "(optimizer state of rank galore_rank); needs the galore extra.",
    )
    galore_target: str = opt(
        "all", "full: GaLore's linear layers: `all` (every one in the layers) or names."
    )
    galore_rank: int = opt(16, "full: GaLore's projection rank.", bounds=POSITIVE_INT)
    galore_update_interval: int = opt(
        200, "full: steps between GaLore's projection updates.", bounds=POSITIVE_INT
    )
    galore_scale: float = opt(2.0, "full: GaLore's update scale.", bounds=POSITIVE)
    galore_proj_type: str = opt(
        "std",
        "full: which side GaLore projects.",
        choices=("std", "reverse_std", "right", "left", "full"),
    )
    galore_layerwise: bool = opt(
        False,
        "full: GaLore updates each weight as soon as its gradient is ready (less memory; one "
        "process, gradient_accumulation_steps 1).",
    )
    use_apollo: bool = opt(
        False,
        "full: APOLLO, AdamW-like updates scaled from low-rank optimizer state (SGD-like "
        "memory); needs the apollo extra.",
    )
    apollo_target: str = opt(
        "all", "full: APOLLO's linear layers: `all` (every one in the layers) or names."
    )
    apollo_rank: int = opt(16, "full: APOLLO's projection rank.", bounds=POSITIVE_INT)
    apollo_update_interval: int = opt(
        200, "full: steps between APOLLO's projection updates.", bounds=POSITIVE_INT
    )
    apollo_scale: float = opt(32.0, "full: APOLLO's update scale.", bounds=POSITIVE)
    apollo_proj: str = opt(
        "random", "full: APOLLO's projection: random or svd.", choices=("random", "svd")
    )
    apollo_proj_type: str = opt(
        "std", "full: which side APOLLO projects.", choices=("std", "right", "left")
    )
    apollo_scale_type: str = opt(
        "channel",
        "full: APOLLO's scaling: per channel or per tensor.",
        choices=("channel", "tensor"),
    )
    apollo_layerwise: bool = opt(
        False,
        "full: APOLLO updates each weight as soon as its gradient is ready (one process, "
        "gradient_accumulation_steps 1).",
    )
    use_badam: bool = opt(
        False,
        "full: BAdam, one decoder layer trained at a time (its fp32 copy and optimizer states "
        "only; the weights stay bf16 under bf16); needs the badam extra, one process.",
    )
    badam_mode: str = opt(
        "layer",
        "full: BAdam's mode: layer (ratio, sparse updates of every layer, is not available).",
        choices=("layer", "ratio"),
    )
    badam_start_block: int | None = opt(
        None,
        "full: BAdam's first layer (0 = the first). Default: by badam_switch_mode.",
        bounds=NON_NEGATIVE,
    )
    badam_switch_mode: str = opt(
        "ascending",
        "full: the order BAdam trains the layers in: ascending, descending, random or fixed.",
        choices=("ascending", "descending", "random", "fixed"),
    )
    badam_switch_interval: int = opt(
        50, "full: BAdam's steps per layer before it moves on.", bounds=POSITIVE_INT
    )
    badam_verbose: int = opt(
        0,
        "full: BAdam's messages: 0 none, 1 each switch, 2 also every trained name.",
        bounds=Bounds(low=0, high=2),
    )
    use_adam_mini: bool = opt(
        False,
        "Adam-mini: Adam with one second-moment value per block of weights (about half of "
        "AdamW's optimizer memory); needs the adam-mini extra.",
    )
    use_muon: bool = opt(
        False,
        "Muon for the hidden layers' 2-D weights (AdamW's learning rate and weight decay carry "
        "over), AdamW for embeddings, head, norms and biases; not with DeepSpeed or FSDP.",
    )
    create_new_adapter: bool = opt(
        False, "lora: with adapter_name_or_path, merge it and train a new adapter on top."
    )
    quantization_bit: int | None = opt(
        None, "QLoRA: load the base model in 4 or 8 bits with bitsandbytes (CUDA or CPU)."
    )
    quantization_method: str = opt(
        "bnb", "QLoRA: the quantizer; bitsandbytes (bnb) here.", choices=("bnb",)
    )
    quantization_type: str = opt(
        "nf4",
        "QLoRA 4-bit: nf4 (NormalFloat, the QLoRA paper's) or fp4.",
        choices=("nf4", "fp4"),
    )
    double_quantization: bool = opt(
        True, "QLoRA 4-bit: quantize the scales too (about 0.37 bits less per weight)."
    )
    pure_bf16: bool = opt(False, "full: keep weights and optimizer state in bf16 (no fp32 copy).")
    use_dft_loss: bool = opt(
        False,
        "sft: DFT, each answer token's loss times its probability under the model (no "
        "gradient through it).",
    )
    use_eaft_loss: bool = opt(
        False,
        "sft: EAFT, each answer token's loss times (entropy of the prediction over its 20 "
        "likeliest tokens / 3) ** eaft_alpha.",
    )
    eaft_alpha: float = opt(1.0, "sft: EAFT's exponent.", bounds=POSITIVE)
    use_asft_loss: bool = opt(
        False,
        "sft: ASFT (anchored SFT), DFT's weighted loss plus asft_alpha x the KL divergence "
        "from the reference model's prediction to the model's at each answer token; the "
        "reference is ref_model, else the base (LoRA) or the starting model (full/freeze).",
    )
    asft_alpha: float = opt(0.1, "sft: ASFT's weight of the KL term.", bounds=NON_NEGATIVE)
    pref_beta: float = opt(
        0.1, "dpo/kto: beta, how far the policy may move from the reference.", bounds=POSITIVE
    )
    pref_ftx: float = opt(
        0.0, "dpo: weight of an added SFT loss on the chosen answers.", bounds=NON_NEGATIVE
    )
    pref_loss: str = opt(
        "sigmoid",
        "dpo: sigmoid (DPO), hinge, ipo, orpo or simpo (the last two need no reference model).",
        choices=PREF_LOSSES,
    )
    simpo_gamma: float = opt(0.5, "simpo: target reward margin gamma.", bounds=NON_NEGATIVE)
    dpo_label_smoothing: float = opt(
        0.0,
        "dpo sigmoid: the share of preference labels taken to be flipped (cDPO, robust to "
        "noisy pairs); 0 is plain DPO.",
        bounds=Bounds(low=0, high=0.5, high_open=True),
    )
    ld_alpha: float | None = opt(
        None,
        "dpo: LD-DPO, the weight of each answer's tokens past the shorter answer's length in "
        "its log-probability (1: plain DPO; 0: compare equal lengths only).",
        bounds=SHARE,
    )
    pref_bco_weight: float = opt(
        0.0,
        "dpo: weight of the added BCO loss (each answer judged on its own against the running "
        "mean reward); the two are averaged by weight.",
        bounds=NON_NEGATIVE,
    )
    ref_model: str | None = opt(
        None,
        "dpo/kto/ppo/grpo/sft: reference model (sft: with use_asft_loss). Default: the base "
        "with LoRA disabled (LoRA), or a frozen copy of the starting model (full/freeze).",
        path=True,
    )
    ref_model_adapters: str | None = opt(
        None,
        "dpo/kto/ppo/grpo/sft: LoRA adapter folder(s) merged into ref_model, comma-separated "
        "(e.g. the SFT run the policy continues, so that the reference is the SFT model).",
        path=True,
    )
    ref_model_quantization_bit: int | None = opt(
        None,
        "dpo/kto/ppo/grpo/sft: load ref_model in 4 or 8 bits (bitsandbytes); its adapters stay "
        "unmerged.",
    )
    kto_chosen_weight: float = opt(
        1.0, "kto: weight of desirable examples' loss.", bounds=NON_NEGATIVE
    )
    kto_rejected_weight: float = opt(
        1.0, "kto: weight of undesirable examples' loss.", bounds=NON_NEGATIVE
    )
    reward_model: str | None = opt(
        None, "ppo/grpo: output_dir of an `rm` run (its value head is loaded with it).", path=True
    )
    reward_model_quantization_bit: int | None = opt(
        None, "ppo/grpo: load reward_model in 4 or 8 bits (bitsandbytes); its adapters unmerged."
    )
    reward_funcs: str | None = opt(
        None,
        "grpo: comma-separated rewards: exact_match, regex_match, numeric_match (against "
        "answer_column), or module:function for your own Python function.",
    )
    answer_column: str = opt("answer", "grpo: the dataset column holding the reference answer.")
    reward_regex: str | None = opt(None, "grpo regex_match: pattern the completion must match.")
    num_generations: int = opt(
        4, "grpo: completions sampled per prompt (the group).", bounds=POSITIVE_INT
    )
    max_completion_length: int = opt(
        128, "grpo/ppo: maximum tokens generated per completion.", bounds=POSITIVE_INT
    )
    ppo_epochs: int = opt(
        1, "ppo/grpo: optimisation passes over each batch of rollouts.", bounds=POSITIVE_INT
    )
    ppo_clip: float = opt(0.2, "ppo/grpo: clipping range of the policy ratio.", bounds=POSITIVE)
    ppo_kl_coef: float = opt(
        0.05,
        "ppo/grpo: weight of the KL penalty to the reference model (GRPO's beta).",
        bounds=NON_NEGATIVE,
    )
    ppo_whiten_rewards: bool = opt(False, "ppo: normalise rewards within each batch.")
    ppo_score_norm: bool = opt(
        False,
        "ppo: normalise each score by the running mean and standard deviation of every score "
        "so far (TRL 0.x's score scaling and norm, as LLaMA-Factory's ppo_score_norm).",
    )
    ppo_target: float | None = opt(
        None,
        "ppo: a target for the KL to the reference (per completion): the KL coefficient starts "
        "at ppo_kl_coef and adapts toward it (TRL 0.x's adaptive KL control, horizon 10,000). "
        "Unset: a fixed ppo_kl_coef.",
        bounds=POSITIVE,
    )


@dataclass
class DataConfig:
    """Which data, and how it becomes tokens."""

    dataset: str | None = opt(None, "Dataset names from dataset_info.json, comma-separated.")
    datasets: dict[str, dict] | None = opt(
        None,
        "Datasets declared in this YAML: name -> a dataset_info.json-style entry (path or "
        "file_name, formatting, columns, tags, placeholders, ...), no dataset_info.json needed; "
        "an entry without a path extends the dataset_info.json entry of the same name.",
        path=True,
    )
    eval_dataset: str | None = opt(
        None, "Datasets used only for evaluation, comma-separated (instead of val_size)."
    )
    eval_on_each_dataset: bool = opt(
        False, "With several eval_dataset names, report each one's eval loss separately."
    )
    dataset_dir: str = opt(
        "data", "Folder holding dataset_info.json and the data files.", path=True
    )
    cutoff_len: int = opt(
        2048, "Maximum tokens per sample after tokenization.", bounds=POSITIVE_INT
    )
    max_samples: int | None = opt(
        None, "Use at most this many records of each dataset.", bounds=POSITIVE_INT
    )
    val_size: float = opt(  # or the word "auto"
        "auto",
        "Held-out share for evaluation: a fraction < 1 or a record count; `auto`: 5% of the "
        "records (at least 8, at most 500) when there are 50 or more and no eval_dataset (not "
        "when streaming, nor for ppo/grpo); 0: none.",
        bounds=Bounds(low=0, high=1, high_open=True, or_count=True, words=("auto",)),
    )
    mix_strategy: str = opt(
        "concat",
        "How several datasets are mixed: concat, interleave_under (stop at the shortest) or "
        "interleave_over (repeat until the longest is used up).",
        choices=("concat", "interleave_under", "interleave_over"),
    )
    interleave_probs: str | None = opt(
        None, "Sampling probabilities of the datasets when interleaving, comma-separated."
    )
    streaming: bool = opt(False, "Read the data as a stream (needs max_steps).")
    buffer_size: int = opt(16384, "Shuffle buffer size when streaming.", bounds=POSITIVE_INT)
    train_on_prompt: bool = opt(False, "Also train on the prompt tokens (not only the answers).")
    mask_history: bool = opt(False, "Train only on the last assistant turn of each conversation.")
    enable_thinking: bool | None = opt(
        True,
        "Reasoning templates: true keeps reasoning, false trains/asks with an empty think block, "
        "null (mixed) follows each sample (empty block only where it has no reasoning).",
    )
    preserve_thinking: bool = opt(
        False, "Keep the reasoning of earlier assistant turns (dropped by default, as vendors do)."
    )
    tool_format: str | None = opt(None, "Tool-call format override (default: the template's).")
    default_system: str | None = opt(None, "System prompt used when a sample has none.")
    packing: bool = opt(
        False, "Pack several samples into each row of cutoff_len (no attention across samples)."
    )
    neat_packing: bool = opt(False, "LLaMA-Factory's name for packing without cross-attention.")
    padding_free: bool | None = opt(
        None,
        "Put each batch's samples side by side in one row instead of padding them: the same "
        "samples per step and the same loss, no compute spent on padding (no attention across "
        "samples). Unset: on for sft without packing (the fastest layout on CPU and GPU), with "
        "padded rows where the model cannot keep the samples of a row apart.",
    )
    preprocessing_num_workers: int | None = opt(
        None, "Processes used to tokenize the data.", bounds=POSITIVE_INT
    )
    overwrite_cache: bool = opt(False, "Re-tokenize even if a cached encoding exists.")
    tokenized_path: str | None = opt(
        None, "Folder to save the encoded dataset to, or load it from.", path=True
    )
    skip_invalid: bool = opt(
        False, "Skip invalid records (reported with counts and reasons) instead of stopping."
    )
    date_string: str | None = opt(
        None,
        "llama3.1 template: the Today Date written in the system header; `today` for today's date.",
    )


@dataclass
class TrainConfig:
    """The training loop (a subset of transformers' TrainingArguments, same names)."""

    do_train: bool = opt(True, "Run training.")
    output_dir: str | None = opt(
        None, "Where the adapter/model, logs and checkpoints go.", path=True
    )
    overwrite_output_dir: bool = opt(False, "Allow writing into a non-empty output_dir.")
    per_device_train_batch_size: int = opt(1, "Samples per device per step.", bounds=POSITIVE_INT)
    per_device_eval_batch_size: int = opt(
        1, "Samples per device per evaluation step.", bounds=POSITIVE_INT
    )
    gradient_accumulation_steps: int = opt(
        1, "Steps whose gradients add up before an update.", bounds=POSITIVE_INT
    )
    learning_rate: float = opt(5e-5, "Peak learning rate.", bounds=POSITIVE)
    num_train_epochs: float = opt(
        3.0, "Passes over the training data (ignored if max_steps > 0).", bounds=NON_NEGATIVE
    )
    max_steps: int = opt(
        -1,
        "Stop after this many optimizer steps (-1: use num_train_epochs).",
        bounds=Bounds(low=-1),
    )
    lr_scheduler_type: str = opt("linear", "Learning-rate schedule: linear, cosine, constant, ...")
    warmup_steps: int = opt(0, "Linear warm-up steps.", bounds=NON_NEGATIVE)
    warmup_ratio: float = opt(
        0.0, "Warm-up as a share of all steps (used when warmup_steps=0).", bounds=SHARE
    )
    weight_decay: float = opt(0.0, "AdamW weight decay.", bounds=NON_NEGATIVE)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.", bounds=NON_NEGATIVE)
    logging_steps: int = opt(10, "Log loss and speed every this many steps.", bounds=POSITIVE_INT)
    save_steps: int = opt(500, "Write a checkpoint every this many steps.", bounds=POSITIVE_INT)
    save_total_limit: int | None = opt(
        None, "Keep at most this many checkpoints.", bounds=POSITIVE_INT
    )
    eval_strategy: str = opt(
        "no",
        "When to evaluate on val_size data: no, steps or epoch.",
        choices=("no", "steps", "epoch"),
    )
    eval_steps: int | None = opt(
        None, "Evaluate every this many steps (default: logging_steps).", bounds=POSITIVE_INT
    )
    bf16: bool = opt(
        False,
        "bfloat16 mixed precision (falls back to fp32 where unsupported). With LoRA or freeze "
        "the weights that do not train are kept in bf16, the trained ones in fp32.",
    )
    fp16: bool = opt(False, "float16 mixed precision (CUDA only).")
    seed: int = opt(
        42,
        "Random seed for initialisation, shuffling and dropout.",
        bounds=Bounds(low=0, high=2**32 - 1),
    )
    disable_shuffling: bool = opt(
        False,
        "Train on the records in the dataset's order, every epoch, instead of shuffled (a "
        "curriculum written in the data's order).",
    )
    group_by_length: bool = opt(
        False,
        "sft/pt: batch samples of similar length together (less padding in padded batches; "
        "transformers' length-grouped sampler).",
    )
    enable_torch_profiler: bool = opt(
        False,
        "Record training steps with torch.profiler: a trace (Perfetto, chrome://tracing) and a "
        "table of the slowest operators per cycle.",
    )
    profiler_output_dir: str | None = opt(
        None, "Where the profiler writes (default: output_dir/profiler).", path=True
    )
    profiler_wait_steps: int = opt(
        1, "Profiler: steps skipped at the start of each cycle.", bounds=NON_NEGATIVE
    )
    profiler_warmup_steps: int = opt(
        1, "Profiler: steps traced but not recorded in each cycle.", bounds=NON_NEGATIVE
    )
    profiler_active_steps: int = opt(
        1, "Profiler: steps recorded in each cycle.", bounds=POSITIVE_INT
    )
    profiler_repeat: int = opt(1, "Profiler: cycles (0: until training ends).", bounds=NON_NEGATIVE)
    profiler_record_shapes: bool = opt(True, "Profiler: record tensor shapes.")
    profiler_profile_memory: bool = opt(True, "Profiler: record memory allocations.")
    profiler_with_stack: bool = opt(True, "Profiler: record Python stacks.")
    plot_loss: bool = opt(False, "Write training_loss.png when training ends.")
    report_compare: bool = opt(
        True,
        "In report.md (written when training ends): answer up to 5 held-out prompts with the "
        "base and the trained model, side by side (stage sft).",
    )
    report_to: str = opt(
        "none", "Experiment tracker: none, tensorboard, wandb, ... (comma-separated)."
    )
    resume_from_checkpoint: str | None = opt(
        None, "Checkpoint folder to resume from, or `auto` for the newest in output_dir.", path=True
    )
    gradient_checkpointing: bool = opt(
        False,
        "Recompute activations in backward to save memory (about 30 % slower). Unset, it is "
        "turned on by itself when the memory estimate says the run does not fit without it.",
    )
    disable_gradient_checkpointing: bool = opt(
        False,
        "LLaMA-Factory's switch: true keeps gradient checkpointing off (never turned on by "
        "itself); false, when given, turns it on (LLaMA-Factory's default).",
    )
    chunked_loss: bool = opt(
        True,
        "Compute the loss on trained tokens only, projecting onto the vocabulary a chunk at a "
        "time (no full logits): the same loss with less memory and time. Off with "
        "compute_accuracy, a LoRA-adapted lm_head, liger-kernel, ZeRO-3 or FSDP.",
    )
    compute_accuracy: bool = opt(False, "Report next-token accuracy on the trained tokens at eval.")
    skip_memory_check: bool = opt(
        False,
        "Train even when the memory estimate (`lmforge estimate`) exceeds the device's free "
        "memory by more than 25 % (by default training stops before loading the model).",
    )
    early_stopping_patience: int | None = opt(
        None,
        "Stop after this many evaluations without a better eval loss (keeps the best).",
        bounds=POSITIVE_INT,
    )
    load_best_model_at_end: bool = opt(
        False,
        "At the end, load the checkpoint with the lowest eval loss into output_dir (needs "
        "evaluation data; save_steps a multiple of eval_steps). On with early stopping.",
    )


@dataclass
class TrackConfig:
    """Experiment tracking: TensorBoard and SwanLab (report_to and plot_loss are under train)."""

    logging_dir: str | None = opt(
        None,
        "TensorBoard's folder (report_to: tensorboard): view the run with `tensorboard "
        "--logdir <logging_dir>`. Default: output_dir/runs.",
        path=True,
    )
    use_swanlab: bool = opt(
        False, "Log the run to SwanLab (the same as adding swanlab to report_to)."
    )
    swanlab_project: str = opt("lmforge", "SwanLab project the run is logged under.")
    swanlab_workspace: str | None = opt(
        None, "SwanLab workspace (an organisation) of the project. Default: your own."
    )
    swanlab_run_name: str | None = opt(
        None, "Name of the run in SwanLab. Default: a name SwanLab makes up."
    )
    swanlab_mode: str = opt(
        "cloud",
        "cloud: log to swanlab.cn (needs `swanlab login`, swanlab_api_key or SWANLAB_API_KEY, and "
        "the internet); local: write the run to swanlab_logdir only, offline (view it with "
        "`swanlab watch <swanlab_logdir>`).",
        choices=("cloud", "local"),
    )
    swanlab_api_key: str | None = opt(
        None,
        "SwanLab API key for cloud mode (instead of `swanlab login` or SWANLAB_API_KEY); never "
        "written to run_config.yaml.",
        secret=True,
    )
    swanlab_logdir: str | None = opt(
        None, "Folder SwanLab writes the run's files to. Default: swanlog.", path=True
    )


@dataclass
class GenerateConfig:
    """Text generation for chat, API and evaluation."""

    max_new_tokens: int = opt(512, "Maximum tokens generated per answer.", bounds=POSITIVE_INT)
    temperature: float = opt(0.95, "Sampling temperature.", bounds=NON_NEGATIVE)
    top_p: float = opt(
        0.7,
        "Nucleus sampling: keep the smallest set of tokens with this mass.",
        bounds=Bounds(low=0, high=1, low_open=True),
    )
    top_k: int = opt(50, "Sample among the k most likely tokens.", bounds=NON_NEGATIVE)
    do_sample: bool = opt(True, "Sample; false means greedy decoding.")
    repetition_penalty: float = opt(
        1.0, "Penalty > 1 discourages repeated tokens.", bounds=POSITIVE
    )
    num_beams: int = opt(
        1,
        "predict: beam search over this many beams (chat, API and webchat sample or decode "
        "greedily, one sequence per answer).",
        bounds=POSITIVE_INT,
    )
    length_penalty: float = opt(
        1.0,
        "predict with num_beams > 1: exponent of the length that divides a beam's score.",
        bounds=Bounds(),  # any finite number: below 0 favours shorter answers
    )
    skip_special_tokens: bool = opt(
        True,
        "Leave special tokens out of answers; false shows them (e.g. <tool_call> added with "
        "add_special_tokens). The stop token never shows.",
    )


@dataclass
class InferConfig:
    """Serving the model: chat, API and webchat."""

    infer_backend: str = opt(
        "huggingface",
        "Inference engine: huggingface (transformers, any device) or vllm (CUDA GPU, needs vllm).",
        choices=("huggingface", "vllm"),
    )
    adapters: dict[str, str] | None = opt(
        None,
        "Named LoRA adapters served at once on one base, each as its own model name, "
        "e.g. {medical: saves/med, legal: saves/legal} (or medical=saves/med,legal=saves/legal).",
        path=True,
    )
    served_model_name: str | None = opt(
        None,
        "Model name of the base (plus merged adapter_name_or_path) in the API. "
        "Default: the adapter's or model's folder name.",
    )
    api_host: str = opt("127.0.0.1", "Address `lmforge api` listens on (env API_HOST).")
    api_port: int = opt(
        8000, "Port `lmforge api` listens on (env API_PORT).", bounds=Bounds(low=0, high=65535)
    )
    api_key: str | None = opt(
        None, "Require `Authorization: Bearer KEY` on API requests (env API_KEY wins)."
    )
    api_cors: str | None = opt(
        None,
        "Web page origins allowed to call the API, comma-separated (e.g. http://localhost:3000), "
        "or *. Requests with any other Origin header are refused (flag --cors).",
    )
    api_max_request_tokens: int | None = opt(
        None,
        "Most tokens one API request may process: prompts x n x (prompt + max_tokens). "
        "Default: 65536, or the model's context if longer (flag --max-request-tokens).",
        bounds=POSITIVE_INT,
    )
    api_max_body_mb: float = opt(
        4.0, "Largest API request body in MiB; larger ones get a 413.", bounds=POSITIVE
    )
    api_max_connections: int | None = opt(
        None,
        "Open connections `lmforge api` accepts. Default: 512, or half the open-file limit.",
        bounds=POSITIVE_INT,
    )
    max_concurrent: int = opt(
        8,
        "Requests generated together (round-robin, token by token); more wait in line.",
        bounds=POSITIVE_INT,
    )
    vllm_maxlen: int = opt(
        4096, "vllm: maximum sequence length (prompt + answer).", bounds=POSITIVE_INT
    )
    vllm_gpu_util: float = opt(
        0.9, "vllm: share of GPU memory vLLM may use.", bounds=Bounds(low=0, high=1, low_open=True)
    )
    vllm_enforce_eager: bool = opt(False, "vllm: disable CUDA graphs (less memory, slower).")
    vllm_max_lora_rank: int = opt(
        32, "vllm: largest LoRA rank among the served adapters.", bounds=POSITIVE_INT
    )


EXPORT_DTYPES = ("bf16", "fp16", "fp32", "bfloat16", "float16", "float32")


@dataclass
class ExportConfig:
    """Exporting a trained model with `lmforge export` (docs/export.md)."""

    export_dir: str | None = opt(
        None,
        "Folder the merged model is written to (under a temporary name, renamed when written "
        "and proven equal to base + adapters).",
        path=True,
    )
    export_size: float = opt(5.0, "Largest weight shard, in GB.", bounds=POSITIVE)
    export_device: str = opt(
        "cpu",
        "Where the merge and the parity check run: cpu, or auto (the GPU when there is one).",
        choices=("cpu", "auto"),
    )
    export_dtype: str | None = opt(
        None,
        "Dtype of the exported weights: bf16, fp16 or fp32. Default: infer_dtype when it is "
        "not auto, else the dtype the base model is stored in.",
        choices=EXPORT_DTYPES,
    )
    export_legacy_format: bool = opt(
        False, "Write PyTorch .bin shards instead of safetensors (for old loaders)."
    )
    export_hub_model_id: str | None = opt(
        None,
        "Also push the finished export to this Hugging Face repo (org/name); needs a login "
        "(HF_TOKEN or `hf auth login`).",
    )
    export_gguf: str | None = opt(
        None,
        "Also write model.gguf (llama.cpp, Ollama) with the tokenizer and chat template inside: "
        "f16 or q8_0.",
        choices=("f16", "q8_0"),
    )


EVAL_TASKS = ("mmlu", "ceval", "cmmlu")


@dataclass
class EvalConfig:
    """Benchmarks with `lmforge eval` and predictions with `lmforge predict` (docs/evaluate.md)."""

    task: str | None = opt(
        None,
        "eval: the benchmark: mmlu, ceval, cmmlu, or the name of your own folder in the same "
        "CSV layout; a suffix picks the split (mmlu_test, ceval_validation, cmmlu_test). "
        "Default split: test (ceval: validation, its test answers are not public).",
    )
    task_dir: str = opt(
        "evaluation",
        "eval: folder holding the benchmark folder named by task (evaluation/mmlu/...), or the "
        "benchmark folder itself, as its release lays it out; or a hub dataset id.",
        path=True,
    )
    batch_size: int = opt(4, "eval: questions scored per forward pass.", bounds=POSITIVE_INT)
    lang: str | None = opt(
        None,
        "eval: prompt wording, en or zh. Default: zh for ceval and cmmlu, en otherwise.",
        choices=("en", "zh"),
    )
    n_shot: int = opt(
        5,
        "eval: solved examples from the dev split put before each question (few-shot).",
        bounds=NON_NEGATIVE,
    )
    save_dir: str | None = opt(
        None, "eval: folder eval_results.json is written to (default: terminal only).", path=True
    )
    compare_base: bool = opt(
        False,
        "eval: with adapter_name_or_path, also score the base model and report both.",
    )
    compare_adapters: str | None = opt(
        None,
        "compare: adapter or checkpoint folders, comma-separated, each compared with the base "
        "on its own (default: adapter_name_or_path).",
        path=True,
    )
    prompts: str | None = opt(
        None,
        "compare: a JSON or JSONL file of prompts (strings, or {prompt, reference}) answered "
        "besides the eval split.",
        path=True,
    )
    do_predict: bool = opt(
        False,
        "Generate answers for eval_dataset (else dataset) and write generated_predictions.jsonl "
        "and predict_results.json (BLEU-4, ROUGE) to output_dir, as `lmforge predict` does.",
    )
    predict_with_generate: bool = opt(
        False,
        "With do_predict: score generated answers (needed for do_predict, as in LLaMA-Factory).",
    )


SYNTH_LLM_KEYS = (
    "base_url model api_key_env temperature max_tokens timeout concurrency requests_per_minute "
    "max_retries retry_wait"
).split()


@dataclass
class SynthConfig:
    """Training data from documents with `lmforge synth`, and `synth augment` (docs/synth.md)."""

    documents: str | None = opt(
        None,
        "synth: the documents, comma-separated (or a YAML list): files, folders (read "
        "recursively) or globs; .md .txt .html, and .pdf .docx with the synth extra.",
    )
    llm: dict[str, str] | None = opt(
        None,
        "synth: the OpenAI-compatible endpoint, a mapping: base_url and model (required), "
        "api_key_env (the environment variable holding the key), temperature (0.7), max_tokens "
        "(2048), timeout (seconds per request, 120), concurrency (requests at once, 4), "
        "requests_per_minute (0: no limit), max_retries (5, on 429/5xx/timeouts), retry_wait "
        "(first backoff in seconds, 1).",
    )
    chunk_min_chars: int = opt(
        200, "synth: a chunk shorter than this joins its neighbour.", bounds=POSITIVE_INT
    )
    chunk_max_chars: int = opt(
        1500,
        "synth: longest chunk, in characters (a table or code block longer than this stays whole).",
        bounds=POSITIVE_INT,
    )
    chunk_overlap: int = opt(
        0,
        "synth: characters of the previous chunk repeated at the start of the next, as context.",
        bounds=NON_NEGATIVE,
    )
    questions_per_chars: int = opt(
        240,
        "synth: one question per this many characters of a chunk (at least one per chunk).",
        bounds=POSITIVE_INT,
    )
    answer_style: str = opt(
        "detailed",
        "synth: how answers are written: concise (a few sentences) or detailed.",
        choices=("concise", "detailed"),
    )
    cot: bool = opt(
        False,
        "synth: also write the reasoning, as a <think>...</think> block before the answer (read "
        "as the reasoning by reasoning templates).",
    )
    language: str = opt(
        "auto",
        "synth: language of the questions and answers: zh, en, or auto (each chunk's own).",
        choices=("auto", "zh", "en"),
    )
    quality_threshold: float | None = opt(
        None,
        "synth: have the LLM score each pair from 1 to 10 and keep pairs scoring at least this "
        "(null: no scoring).",
        bounds=Bounds(low=0, high=10),
    )
    dedupe_threshold: float = opt(
        0.9,
        "synth: drop a question whose character-trigram similarity (Jaccard) to an earlier one is "
        "at least this (1: exact duplicates only).",
        bounds=Bounds(low=0, high=1, low_open=True),
    )
    format: str = opt(
        "alpaca",
        "synth: files written to output_dir: alpaca (alpaca.json), sharegpt (sharegpt.json) or "
        "both; with dataset_info.json.",
        choices=("alpaca", "sharegpt", "both"),
    )
    eval_share: float = opt(
        0.0,
        "synth: share of chunks whose pairs go to eval.json instead (whole chunks, so no eval "
        "question shares a chunk with a training one).",
        bounds=Bounds(low=0, high=1, high_open=True),
    )
    prompt_dir: str | None = opt(
        None,
        "synth: folder with your own en.yaml / zh.yaml prompts, each key replacing the built-in "
        "one (docs/synth.md lists them).",
        path=True,
    )
    augment_variants: int = opt(
        3, "synth augment: rewrites asked for per record of `dataset`.", bounds=POSITIVE_INT
    )
    augment_keep_original: bool = opt(
        True, "synth augment: also write each original record next to its rewrites."
    )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "method": MethodConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "track": TrackConfig,
    "generate": GenerateConfig,
    "infer": InferConfig,
    "export": ExportConfig,
    "eval": EvalConfig,
    "synth": SynthConfig,
}


@dataclass
class Config:
    """The whole configuration. `passthrough` holds other TrainingArguments keys, unchanged."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    passthrough: dict[str, Any] = field(default_factory=dict)
    # Notes made while loading (fallbacks, ignored keys), shown in the plan; what resolving
    # derives is in the RunPlan (config/plan.py), never written back here.
    notes: list[str] = field(default_factory=list)
    # Where the config came from, for messages: the YAML file's path, or "command line" when
    # it was given as flags only.
    source: str | None = None
    # The YAML file, or None (flags only).
    path: str | None = None
    # The keys the YAML file or the command line set (the rest are defaults).
    given: frozenset[str] = frozenset()
    # key -> where it was set: the YAML file's path or "command line" (see `where`).
    origins: dict[str, str] = field(default_factory=dict)
    # LLaMA-Factory keys that were given but do nothing here: (key, reason), in the order given.
    # The plan lists each once: "`key`: not used here, because <reason>".
    not_used: tuple[tuple[str, str], ...] = ()
    # Path keys -> the path they resolved to (and against what), for the plan.
    paths: dict[str, ResolvedPath] = field(default_factory=dict)

    def where(self, key: str) -> str | None:
        """Where `key` was set (the YAML file or "command line"), for an error about it; the
        config's source for a key left at its default."""
        return self.origins.get(key, self.source)

    def to_flat_dict(self) -> dict[str, Any]:
        """The flat LLaMA-Factory-style mapping, as written to run_config.yaml (secrets, such
        as swanlab_api_key, are left out)."""
        flat: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                value = getattr(section, f.name)
                if f.metadata.get("secret") and value is not None:
                    continue
                flat[f.name] = value
        flat.update(self.passthrough)
        return flat


@dataclass(frozen=True)
class ResolvedPath:
    """Where a relative path in the config was found: `base` is "working directory", "YAML
    file's folder" or "as given" (absolute, or `~`)."""

    path: str
    base: str

    def __str__(self) -> str:
        return f"{self.path} ({self.base})"


def comma_separated(value: str | None) -> list[str]:
    """The items of a comma-joined key (adapter_name_or_path, additional_target, ...), stripped,
    empty ones dropped."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def key_index() -> dict[str, tuple[str, Any]]:
    """Every known flat key -> (section name, dataclass field)."""
    index: dict[str, tuple[str, Any]] = {}
    for section_name, cls in SECTIONS.items():
        for f in fields(cls):
            index[f.name] = (section_name, f)
    return index
