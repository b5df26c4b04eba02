from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.load import parse_overrides
from lmforge.errors import UserError


def write(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_scientific_notation_is_a_float(tmp_path):
    config = load_config(write(tmp_path, "learning_rate: 5e-5\nlora_rank: 16\n"))
    assert config.train.learning_rate == pytest.approx(5e-5)
    assert isinstance(config.train.learning_rate, float)
    assert config.method.lora_rank == 16


def test_overrides_key_value_and_flags(tmp_path):
    path = write(tmp_path, "learning_rate: 1.0e-3\nadapter_name_or_path: /abs/adapter\n")
    config = load_config(
        path, ["learning_rate=2e-4", "--lora-rank", "4", "adapter_name_or_path=null"]
    )
    assert config.train.learning_rate == pytest.approx(2e-4)
    assert config.method.lora_rank == 4
    assert config.model.adapter_name_or_path is None


def test_parse_overrides_forms():
    parsed = parse_overrides(["a=1", "--b", "x", "--c=true", "--d"])
    assert parsed == {"a": 1, "b": "x", "c": True, "d": True}


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, "lora_rnak: 8\n"))
    message = str(info.value)
    assert "unknown key `lora_rnak`" in message
    assert "did you mean `lora_rank`" in message
    assert "train.yaml" in message


def test_wrong_type_names_key_value_and_type(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, "per_device_train_batch_size: four\n"))
    message = str(info.value)
    assert "`per_device_train_batch_size: 'four'` is not a valid whole number" in message


def test_choices_are_checked(tmp_path):
    with pytest.raises(
        UserError, match="finetuning_type: qlora` is not one of lora, oft, freeze, full"
    ):
        load_config(write(tmp_path, "finetuning_type: qlora\n"))


def test_null_for_required_value_is_refused(tmp_path):
    with pytest.raises(UserError, match="`cutoff_len` cannot be null"):
        load_config(write(tmp_path, "cutoff_len: null\n"))


def test_relative_paths_inputs_from_cwd_then_yaml_folder_outputs_under_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    (folder / "data").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load_config(
        write(folder, "dataset_dir: data\noutput_dir: saves/run\nmodel_name_or_path: org/model\n")
    )
    # data exists only next to the YAML file: read from there; the output goes under the cwd.
    assert Path(config.data.dataset_dir) == (folder / "data").resolve()
    assert Path(config.train.output_dir) == work / "saves/run"
    assert config.model.model_name_or_path == "org/model"  # a hub id stays a hub id
    assert str(config.paths["dataset_dir"]) == f"{(folder / 'data').resolve()} (YAML file's folder)"
    assert str(config.paths["output_dir"]) == f"{work / 'saves/run'} (working directory)"
    assert "model_name_or_path" not in config.paths
    # The working directory comes first, as in LLaMA-Factory.
    (work / "data").mkdir()
    config = load_config(folder / "train.yaml")
    assert Path(config.data.dataset_dir) == work / "data"


def test_resume_keyword_is_not_a_path(tmp_path):
    config = load_config(write(tmp_path, "resume_from_checkpoint: auto\n"))
    assert config.train.resume_from_checkpoint == "auto"
    config = load_config(write(tmp_path, "resume_from_checkpoint: false\n"))
    assert config.train.resume_from_checkpoint == "false"


def test_training_arguments_keys_pass_through(tmp_path):
    config = load_config(write(tmp_path, "ddp_timeout: 180000000\ndataloader_num_workers: 0\n"))
    assert config.passthrough == {"ddp_timeout": 180000000, "dataloader_num_workers": 0}


def test_no_is_the_strategy_no_not_false(tmp_path):
    """YAML (and LLaMA-Factory's OmegaConf) read `no` as false: a strategy key written `no`,
    in the file or on the command line, means the strategy "no"; a boolean key stays false."""
    path = write(tmp_path, "save_strategy: no\neval_strategy: no\nsave_only_model: no\n")
    config = load_config(path)
    assert config.train.eval_strategy == "no"
    assert config.passthrough == {"save_strategy": "no", "save_only_model": False}
    flags = load_config(None, ["--save_strategy", "no", "logging_strategy=no", "eval_strategy=no"])
    assert flags.passthrough == {"save_strategy": "no", "logging_strategy": "no"}
    assert flags.train.eval_strategy == "no"
    yes = r"`eval_strategy: true` is not one of no, steps, epoch \(YAML reads yes, on and true as"
    with pytest.raises(UserError, match=yes):
        load_config(None, ["eval_strategy=yes"])


def test_list_value_joins(tmp_path):
    config = load_config(write(tmp_path, "dataset: [identity, general]\n"))
    assert config.data.dataset == "identity,general"


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(UserError, match=r"not valid YAML at line 2"):
        load_config(write(tmp_path, "a: 1\nb: c: d\n"))


def test_cli_unknown_key_exits_2_before_loading_a_model(tmp_path, capsys):
    path = write(tmp_path, "model_name_or_path: /does/not/exist\nlearning_rat: 1\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "unknown key `learning_rat`" in err and "learning_rate" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_docs_config_reference_is_current():
    from lmforge.config.docs import config_reference_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert docs.read_text() == config_reference_markdown() + "\n", (
        "docs/config.md is stale: run python -m lmforge.config.docs > docs/config.md"
    )
