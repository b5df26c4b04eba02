"""pt, rm, dpo (every pref_loss) and kto trained a few steps on the tiny model with data in
LLaMA-Factory's shapes: losses fall, rewards separate, and the outputs reload."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import OMIT, run_train, write_config, write_pairs_dataset
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.model.load import load_model
from lmforge.train.trainers.value_head import (
    ModelWithValueHead,
    ValueHead,
    last_token_scores,
    load_value_head,
)

LF_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory_data"
PAIRS = [
    {"instruction": f"Question {i}?", "input": "", "chosen": "Yes, gladly.", "rejected": "no"}
    for i in range(8)
]


STAGES = {
    "records": None,  # each test names its dataset and dataset_dir
    "per_device_train_batch_size": 4,
    "max_steps": 8,
    "logging_steps": 1,
    "save_steps": 100,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "lora_alpha": 32,
}


def log(run_result) -> list[dict]:
    text = (run_result.output_dir / "trainer_log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def trainer_logs(run_result) -> list[dict]:
    state = json.loads((run_result.output_dir / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def uninterrupted_and_resumed(tmp_path, model_dir, data: str, settings: dict):
    """Three runs of STAGES + settings: to the end (a), to the end again (b), and b resumed from
    its checkpoint-2, which must repeat a."""
    full = run_train(tmp_path / "a", model_dir, STAGES, dataset_dir=data, **settings)
    first = run_train(tmp_path / "b", model_dir, STAGES, dataset_dir=data, **settings)
    resumed = run_train(
        tmp_path / "b",
        model_dir,
        STAGES,
        dataset_dir=data,
        resume_from_checkpoint=str(first.output_dir / "checkpoint-2"),
        **settings,
    )
    return full, first, resumed


def test_pretraining_on_text(tmp_path, tiny_model_dir):
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="pt",
        dataset="c4_demo",
        dataset_dir=str(LF_DATA),
        cutoff_len=64,
        finetuning_type="full",
        learning_rate=1e-3,
    )
    losses = [r["loss"] for r in log(result)]
    assert losses[-1] < losses[0]


def test_reward_model_separates_pairs_and_reloads(tmp_path, tiny_model_dir):
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="rm",
        dataset="pairs",
        dataset_dir=str(write_pairs_dataset(tmp_path / "data", PAIRS)),
        max_steps=12,
    )
    history = trainer_logs(result)
    assert history[-1]["rewards/accuracies"] == 1.0
    assert history[-1]["loss"] < history[0]["loss"]
    head_file = result.output_dir / "value_head.safetensors"
    assert head_file.is_file() and (result.output_dir / "adapter_config.json").is_file()
    # Reload: base + adapter + value head scores chosen above rejected.
    from lmforge.model.load import attach_adapters

    model = attach_adapters(load_model(tiny_model_dir), [str(result.output_dir)], merge=True)
    head = load_value_head(ValueHead(model.config.hidden_size), result.output_dir)
    from conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rows = [
        tok.encode(
            "<bos><start_of_turn>user\nQuestion 1?<end_of_turn>\n<start_of_turn>model\n"
            + answer
            + "<end_of_turn>\n",
            add_special_tokens=False,
        )
        for answer in ("Yes, gladly.", "no")
    ]
    length = max(map(len, rows))
    ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    with torch.no_grad():
        chosen, rejected = last_token_scores(ModelWithValueHead(model, head), ids, mask).tolist()
    assert chosen > rejected


def test_reward_model_resumes_with_its_value_head(tmp_path, tiny_model_dir):
    settings = dict(
        stage="rm", dataset="pairs", max_steps=4, save_steps=2, per_device_train_batch_size=2
    )
    data = str(write_pairs_dataset(tmp_path / "data", PAIRS))
    full, first, resumed = uninterrupted_and_resumed(tmp_path, tiny_model_dir, data, settings)
    assert (first.output_dir / "checkpoint-2" / "value_head.safetensors").is_file()
    assert [h["loss"] for h in trainer_logs(resumed)] == pytest.approx(
        [h["loss"] for h in trainer_logs(full)], abs=1e-6
    )
    head = full.model.value_head.summary.weight
    assert torch.allclose(resumed.model.value_head.summary.weight, head, atol=1e-6)


def test_reward_model_evaluates_and_loads_the_best_head(tmp_path, tiny_model_dir):
    """eval_loss is reported (it was not: the Trainer finds no label names on the model), and
    load_best_model_at_end restores the best checkpoint's value head with its adapter."""
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="rm",
        dataset="pairs",
        dataset_dir=str(write_pairs_dataset(tmp_path / "data", PAIRS)),
        max_steps=6,
        save_steps=2,
        eval_steps=2,
        val_size=0.25,
        load_best_model_at_end=True,
        greater_is_better=True,  # passed through: makes the first checkpoint the best one
    )
    state = json.loads((result.output_dir / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [2, 4, 6]
    best = Path(state["best_model_checkpoint"])
    assert best.name == "checkpoint-2"
    head = load_file(best / "value_head.safetensors")["summary.weight"]
    assert torch.equal(result.model.value_head.summary.weight.detach(), head)
    assert torch.equal(
        load_file(result.output_dir / "value_head.safetensors")["summary.weight"], head
    )


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_gradient_accumulation_matches_a_larger_batch(tmp_path, tiny_model_dir, stage):
    """The losses are batch means: with 2 x 2 accumulated the Trainer divides by 2, so the
    logged loss and the gradient norm are those of one batch of 4 (they were twice as large)."""
    data = str(write_pairs_dataset(tmp_path / "data", PAIRS))
    logs = [
        trainer_logs(
            run_train(
                tmp_path / f"b{batch}",
                tiny_model_dir,
                STAGES,
                stage=stage,
                dataset="pairs",
                dataset_dir=data,
                max_steps=2,
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=4 // batch,
            )
        )
        for batch in (4, 2)
    ]
    for key in ("loss", "grad_norm"):
        assert [h[key] for h in logs[1]] == pytest.approx([h[key] for h in logs[0]], rel=1e-4)


@pytest.mark.parametrize("pref_loss", ["sigmoid", "hinge", "ipo", "orpo", "simpo"])
def test_dpo_family_prefers_the_chosen_answers(tmp_path, tiny_model_dir, pref_loss):
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="dpo",
        dataset="pairs",
        pref_loss=pref_loss,
        dataset_dir=str(write_pairs_dataset(tmp_path / "data", PAIRS)),
        pref_beta=0.5,
    )
    history = trainer_logs(result)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    assert history[-1]["rewards/chosen"] > history[-1]["rewards/rejected"]
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_dpo_with_full_tuning_uses_a_frozen_reference_copy(tmp_path, tiny_model_dir):
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="dpo",
        dataset="pairs",
        finetuning_type="full",
        learning_rate=1e-3,
        max_steps=4,
        dataset_dir=str(write_pairs_dataset(tmp_path / "data", PAIRS)),
    )
    history = trainer_logs(result)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert history[-1]["rewards/margins"] > 0


@pytest.mark.parametrize(
    "settings", [{"finetuning_type": "full"}, {"ref_model": "MODEL"}], ids=["copy", "ref_model"]
)
def test_the_reference_model_is_placed_on_the_training_device(tmp_path, tiny_model_dir, settings):
    # The Trainer moves only the model it trains: on a GPU a reference left on the CPU met
    # batches on the GPU at its first forward pass (tests/gpu/test_reference_cuda.py runs it).
    from types import SimpleNamespace

    from lmforge.config.resolve import resolve_for_training
    from lmforge.train.trainers.reference import load_reference_model

    settings = {k: str(tiny_model_dir) if v == "MODEL" else v for k, v in settings.items()}
    path = write_config(tmp_path, tiny_model_dir, stage="dpo", dataset="pairs", **settings)
    config = load_config(path)
    plan = resolve_for_training(config, bf16_supported=False, cuda=False, check_output_dir=False)
    model = load_model(str(tiny_model_dir))
    inputs = SimpleNamespace(
        config=config, plan=plan, model=model, args=SimpleNamespace(device=torch.device("meta"))
    )
    reference = load_reference_model(inputs)
    assert reference is not model
    assert {p.device.type for p in reference.parameters()} == {"meta"}
    assert not any(p.requires_grad for p in reference.parameters())
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # the policy is not moved


def test_kto_on_labelled_completions(tmp_path, tiny_model_dir):
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="kto",
        dataset="kto_en_demo",
        dataset_dir=str(LF_DATA),
        per_device_train_batch_size=2,
        max_steps=4,
    )
    history = trainer_logs(result)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert "kl" in history[-1]


# KTO: five prompts with answers of different lengths, desirable and undesirable.
KTO_RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"Q{i}"},
            {"role": "assistant", "content": f"a{i}" * (i + 1)},
        ],
        "label": i % 2 == 0,
    }
    for i in range(5)
]


def write_kto_dataset(folder: Path, records: list[dict], name: str = "kto") -> Path:
    """Records in kto_en_demo's layout (sharegpt messages, a `label` column) as `name`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(records))
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = json.loads((LF_DATA / "dataset_info.json").read_text())["kto_en_demo"]
    info[name]["file_name"] = f"{name}.json"
    info_path.write_text(json.dumps(info))
    return folder


def gemma_ids(text: str) -> list[int]:
    from conftest import build_tiny_tokenizer

    return build_tiny_tokenizer().encode(text, add_special_tokens=False)


def kto_prompt_ids(i: int) -> list[int]:
    return gemma_ids(f"<bos><start_of_turn>user\nQ{i}<end_of_turn>\n<start_of_turn>model\n")


def kto_answer_ids(i: int) -> list[int]:
    return gemma_ids(KTO_RECORDS[i]["messages"][1]["content"] + "<end_of_turn>\n")


@pytest.mark.parametrize("batch_size", [1, 2])
def test_kto_kl_rows_hold_another_records_answer_at_any_batch_size(
    tmp_path, tiny_model_dir, monkeypatch, batch_size
):
    """The KL half of each training batch: the sample's prompt with the answer of a different
    record (picked at encoding time, 2 records further on among 5), the prompt masked. With
    batch size 1 it was the sample's own answer, which made the KL estimate the reward."""
    from lmforge.train.trainers.preference import KTOTrainer

    batches = []
    compute_loss = KTOTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        batches.append({k: v.clone() for k, v in inputs.items()})
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(KTOTrainer, "compute_loss", spy)
    result = run_train(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="kto",
        dataset="kto",
        dataset_dir=str(write_kto_dataset(tmp_path / "data", KTO_RECORDS)),
        per_device_train_batch_size=batch_size,
        max_steps=2,
    )
    history = trainer_logs(result)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert all("kl" in h for h in history)
    assert len(batches) == 2
    prompts = {tuple(kto_prompt_ids(i)): i for i in range(5)}
    seen = []
    for batch in batches:
        n = batch["desirable"].shape[0]
        assert n == batch_size and batch["input_ids"].shape[0] == 2 * n
        records = []
        for row in range(n):  # which record each sample is (the sampler shuffles)
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            i = next(i for p, i in prompts.items() if ids[: len(p)] == list(p))
            records.append(i)
        seen += records
        rows, labels = [], []
        for i in records:  # the samples
            rows.append(kto_prompt_ids(i) + kto_answer_ids(i))
            labels.append([-100] * len(kto_prompt_ids(i)) + kto_answer_ids(i))
        for i in records:  # then their KL rows
            other = (i + 2) % 5
            rows.append(kto_prompt_ids(i) + kto_answer_ids(other))
            labels.append([-100] * len(kto_prompt_ids(i)) + kto_answer_ids(other))
        width = max(map(len, rows))
        assert batch["input_ids"].tolist() == [r + [0] * (width - len(r)) for r in rows]
        assert batch["labels"].tolist() == [r + [-100] * (width - len(r)) for r in labels]
        assert batch["attention_mask"].tolist() == [
            [1] * len(r) + [0] * (width - len(r)) for r in rows
        ]
        assert batch["desirable"].tolist() == [i % 2 == 0 for i in records]
    assert len(set(seen)) == len(seen)  # different samples each step


def test_kto_with_batch_size_one_resumes_exactly(tmp_path, tiny_model_dir):
    settings = dict(
        stage="kto", dataset="kto", max_steps=4, save_steps=2, per_device_train_batch_size=1
    )
    data = str(write_kto_dataset(tmp_path / "data", KTO_RECORDS))
    full, _, resumed = uninterrupted_and_resumed(tmp_path, tiny_model_dir, data, settings)
    for key in ("loss", "kl"):  # the same samples, with the same KL rows
        assert [h[key] for h in trainer_logs(resumed)] == pytest.approx(
            [h[key] for h in trainer_logs(full)], abs=1e-6
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "the training data holds a single record"),
        ({"val_size": 1}, "the evaluation split holds a single record"),
    ],
)
def test_kto_refuses_a_split_of_one_record(tmp_path, tiny_model_dir, capsys, settings, message):
    """One record has no other record's answer for its KL row: exit 2, nothing written."""
    records = KTO_RECORDS[:1] if not settings else KTO_RECORDS[:3]
    path = write_config(
        tmp_path,
        tiny_model_dir,
        STAGES,
        stage="kto",
        dataset="kto",
        dataset_dir=str(write_kto_dataset(tmp_path / "data", records)),
        **settings,
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "kto.json:record" in err and "Fix:" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "stage, dataset, message",
    [
        ("sft", "dpo_en_demo", "is preference data (`ranking: true`), which stage sft cannot use"),
        ("dpo", "alpaca_en_demo", "stage dpo trains on preference pairs"),
        ("kto", "alpaca_en_demo", "stage kto needs a `kto_tag` column"),
    ],
)
def test_wrong_kind_of_data_for_the_stage(
    tmp_path, tiny_model_dir, stage, dataset, message, capsys
):
    path = write_config(
        tmp_path,
        "/not/loaded",
        records=None,
        name="t",
        template=OMIT,
        stage=stage,
        dataset=dataset,
        dataset_dir=str(LF_DATA),
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_pref_loss_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("stage: dpo\npref_loss: kto_pair\n")
    with pytest.raises(UserError, match="`pref_loss: kto_pair` is not one of sigmoid, hinge"):
        load_config(path)


def test_dpo_with_label_smoothing_ld_alpha_and_bco_resumes_exactly(
    tmp_path, tiny_model_dir, caplog
):
    """LLaMA-Factory's dpo_label_smoothing, ld_alpha and pref_bco_weight train, and BCO's
    running mean reward is saved with the checkpoint: the resumed run repeats the losses."""
    caplog.set_level("INFO", logger="lmforge.train.run")
    settings = dict(
        stage="dpo",
        dataset="pairs",
        max_steps=4,
        save_steps=2,
        per_device_train_batch_size=2,
        pref_beta=0.5,
        dpo_label_smoothing=0.1,
        ld_alpha=0.5,
        pref_bco_weight=0.5,
    )
    data = str(write_pairs_dataset(tmp_path / "data", PAIRS))
    full, first, resumed = uninterrupted_and_resumed(tmp_path, tiny_model_dir, data, settings)
    saved = json.loads((first.output_dir / "checkpoint-2" / "lmforge_state.json").read_text())
    assert saved["trainer"]["bco_mean_reward"]["count"] == 2
    history = trainer_logs(full)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert [h["loss"] for h in trainer_logs(resumed)] == pytest.approx(
        [h["loss"] for h in history], abs=1e-6
    )
    assert (
        "  loss: dpo sigmoid, beta 0.5; cDPO label smoothing 0.1; LD-DPO alpha 0.5; BCO weight 0.5"
        in [r.message for r in caplog.records]
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pref_loss": "hinge", "dpo_label_smoothing": 0.1}, "works with pref_loss: sigmoid"),
        ({"pref_loss": "simpo", "pref_bco_weight": 0.5}, "needs a reference model"),
        ({"dpo_label_smoothing": 0.5}, "from 0 up to (not including) 0.5"),
        ({"ld_alpha": 1.5}, "from 0 to 1"),
    ],
)
def test_dpo_settings_that_cannot_apply_are_refused(tmp_path, tiny_model_dir, settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_train(
            tmp_path,
            tiny_model_dir,
            STAGES,
            stage="dpo",
            dataset="pairs",
            dataset_dir=str(write_pairs_dataset(tmp_path / "data", PAIRS)),
            **settings,
        )
