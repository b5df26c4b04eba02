"""Every key LLaMA-Factory 0.9 accepts loads (src/lmforge/config/llamafactory_keys.yaml); the
ones that do nothing here are kept with their reason; truly unknown keys are all named in one
error, with a suggestion only for a typo."""

import dataclasses

import pytest
import yaml

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.load import llamafactory_keys
from lmforge.config.schema import key_index
from lmforge.errors import UserError
from lmforge.suggest import closest_key

LF = llamafactory_keys()
ALL_KEYS = sorted(LF.kinds)


def sample_value(key: str):
    """A valid value for a key: the schema default where lmforge has the key, else `true`."""
    target = LF.aliases.get(key, key)
    index = key_index()
    if target in index:
        section, f = index[target]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        return default
    if LF.kinds[key] == "transformers":
        from transformers import TrainingArguments

        f = {f.name: f for f in dataclasses.fields(TrainingArguments)}[key]
        return f.default if f.default is not dataclasses.MISSING else None
    return True


def test_the_data_file_names_its_source_and_is_consistent():
    from transformers import TrainingArguments

    assert LF.source["releases"][0] == "v0.9.0" and len(LF.source["main"]) == 40
    groups = set(LF.groups)
    assert {
        "ModelArguments",
        "DataArguments",
        "FinetuningArguments",
        "GeneratingArguments",
        "EvaluationArguments",
        "TrainingArguments",
    } <= groups
    training_arguments = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key, kind in LF.kinds.items():
        if kind == "lmforge":
            assert key in key_index(), key
        elif kind == "transformers":
            assert key in training_arguments, key
        elif kind == "alias":
            assert LF.aliases[key] in key_index() or LF.aliases[key] in training_arguments
        else:
            assert LF.not_used[key], key
    assert len(ALL_KEYS) > 380


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_llamafactory_key_loads(key, tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text(yaml.safe_dump({key: sample_value(key)}))
    config = load_config(path)
    if key in LF.not_used:
        assert config.not_used == ((key, LF.not_used[key]),)
    else:
        assert config.not_used == ()


def test_all_llamafactory_keys_at_once_from_a_file_and_from_flags(tmp_path):
    keys = [k for k in ALL_KEYS if k not in LF.aliases]  # an alias and its target clash
    path = tmp_path / "lf.yaml"
    path.write_text(yaml.safe_dump({k: sample_value(k) for k in keys}))
    config = load_config(path)
    assert [k for k, _ in config.not_used] == [k for k in keys if k in LF.not_used]
    flags = [f"--{k}={v}" for k in keys if k in LF.not_used for v in ["true"]]
    assert len(load_config(None, flags).not_used) == len(LF.not_used)


def test_multimodal_and_hardware_keys_are_listed_with_why():
    config = load_config(
        None,
        [
            "--freeze_vision_tower",
            "true",
            "--image_max_pixels",
            "589824",
            "--use_unsloth",
            "true",
            "--use_galore",
            "false",  # asks for nothing: not listed
            "--generation_num_beams",
            "4",
        ],
    )
    assert dict(config.not_used) == {
        "freeze_vision_tower": "lmforge trains and serves text-only models, so image, video and "
        "audio settings have nothing to act on",
        "image_max_pixels": "lmforge trains and serves text-only models, so image, video and "
        "audio settings have nothing to act on",
        "use_unsloth": "Unsloth's patched kernels are not used; lmforge's own chunked loss and "
        "padding_free save the memory here",
        "generation_num_beams": "`lmforge predict` and do_predict generate up to max_new_tokens "
        "new tokens per answer with the generate settings (no beam search, no separate "
        "generation config)",
    }
    assert "generation_num_beams" not in config.passthrough  # not handed on to do nothing
    predict = load_config(None, ["--do_predict", "true"])  # lmforge's own key now
    assert predict.eval.do_predict and "do_predict" not in predict.passthrough


def test_renamed_keys_are_read_under_their_new_name():
    config = load_config(None, ["early_stopping_steps=3", "per_gpu_train_batch_size=4"])
    assert config.train.early_stopping_patience == 3
    assert config.train.per_device_train_batch_size == 4
    assert config.not_used == ()
    assert load_config(None, ["no_cuda=true"]).passthrough == {"use_cpu": True}
    with pytest.raises(UserError) as info:
        load_config(None, ["early_stopping_steps=3", "early_stopping_patience=2"])
    assert info.value.format() == (
        "command line: `early_stopping_steps` and `early_stopping_patience` are both set, and "
        "`early_stopping_steps` is the older name of `early_stopping_patience`. Fix: keep only "
        "`early_stopping_patience`."
    )


def test_swanlab_and_logging_dir_are_lmforge_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None,
        [
            "--use_swanlab",
            "true",
            "--swanlab_project",
            "p",
            "--swanlab_mode",
            "local",
            "--swanlab_logdir",
            "swanlog",
            "--logging_dir",
            "tb",
            "--swanlab_api_key",
            "secret",
        ],
    )
    track = config.track
    assert track.use_swanlab and track.swanlab_project == "p" and track.swanlab_mode == "local"
    assert track.swanlab_logdir == str(tmp_path / "swanlog")
    assert track.logging_dir == str(tmp_path / "tb")
    assert config.not_used == ()
    assert "swanlab_api_key" not in config.to_flat_dict()  # never written to run_config.yaml
    with pytest.raises(UserError, match="`swanlab_mode: offline` is not one of cloud, local"):
        load_config(None, ["swanlab_mode=offline"])


def test_date_string_is_a_data_setting_the_template_reads():
    from lmforge.data.templates.named import template_options

    config = load_config(None, ["date_string=26 Jul 2024"])
    assert config.data.date_string == "26 Jul 2024"
    assert template_options(config.data)["date_string"] == "26 Jul 2024"


# ---- unknown keys -------------------------------------------------------------------------------


def test_all_unknown_keys_in_one_error_from_the_cli(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("lora_rnak: 8\nfoo_bar: 1\nlearning_rate: 1e-4\n")
    assert main(["train", str(path), "--use_swanlb", "true"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: 3 unknown keys: `lora_rnak` ({path}; did you mean `lora_rank`?), `foo_bar` "
        f"({path}), `use_swanlb` (command line; did you mean `use_swanlab`?). Fix: correct or "
        "remove them (docs/config.md lists every key lmforge accepts).\n"
    )


def test_unknown_keys_from_one_place_name_it_once(capsys):
    assert main(["train", "--stage", "sft", "--lora_rnak", "8", "--foo_bar", "1"]) == 2
    assert capsys.readouterr().err == (
        "error: command line: 2 unknown keys: `lora_rnak` (did you mean `lora_rank`?), "
        "`foo_bar`. Fix: correct or remove them (docs/config.md lists every key lmforge "
        "accepts).\n"
    )


def test_one_unknown_key_without_a_close_one(capsys):
    assert main(["chat", "--model_name_or_path", "x", "--colour", "red"]) == 2
    assert capsys.readouterr().err == (
        "error: command line: unknown key `colour`. Fix: remove it, or see docs/config.md for "
        "every key lmforge accepts.\n"
    )


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("lora_rnak", "lora_rank"),
        ("learning_rat", "learning_rate"),
        ("learningrate", "learning_rate"),
        ("lroa_rank", "lora_rank"),
        ("templte", "template"),
        ("num_train_epoch", "num_train_epochs"),
        ("swanlab_projct", "swanlab_project"),
        ("use_swanlb", "use_swanlab"),
    ],
)
def test_a_typo_gets_the_key_it_misspells(typo, meant):
    from lmforge.config.load import known_keys

    assert closest_key(typo, known_keys()) == meant


@pytest.mark.parametrize(
    "name, known",
    [
        ("use_swanlab", ["use_rslora", "use_dora", "use_unsloth"]),
        ("logging_dir", ["logging_first_step", "logging_steps", "logging_strategy"]),
        ("swanlab_project", ["project", "swanlab_mode"]),
        ("top_k", ["top_p"]),
        ("kto_beta", ["pref_beta"]),
        ("bf16", ["fp16"]),
    ],
)
def test_no_suggestion_that_changes_meaning(name, known):
    assert closest_key(name, known) is None
