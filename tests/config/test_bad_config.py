"""Bad config files and values: one paragraph naming what, where and the fix, exit code 2,
before any model is loaded (the model path in these configs does not exist)."""

from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.schema import key_index
from lmforge.config.yaml_file import MAX_VALUES
from lmforge.errors import UserError

HEAD = "model_name_or_path: /does/not/exist\n"


def train(path: Path | str, capsys, *extra: str) -> str:
    """`lmforge train` on the file: exit code 2, one paragraph on stderr, returned."""
    assert main(["train", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Fix: " in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def write_bytes(tmp_path: Path, data: bytes, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---- the file -------------------------------------------------------------------------------


def test_duplicate_key_names_both_lines(tmp_path, capsys):
    path = write_bytes(
        tmp_path, (HEAD + "learning_rate: 1e-4\nlora_rank: 8\nlearning_rate: 2e-4\n").encode()
    )
    err = train(path, capsys)
    assert f"{path}: key `learning_rate` is given twice, on lines 2 and 4" in err
    assert "Fix: remove one of them" in err


def test_duplicate_key_inside_a_nested_mapping_and_merge_keys_are_fine(tmp_path):
    text = "datasets:\n  a:\n    path: x.jsonl\n    path: y.jsonl\n"
    with pytest.raises(UserError, match="key `path` is given twice, on lines 3 and 4"):
        load_config(write_bytes(tmp_path, text.encode()))
    # A `<<` merge that a later key overrides is YAML's own feature, not a duplicate.
    text = (
        "datasets:\n  base: &b {path: x.jsonl, formatting: alpaca}\n  b: {<<: *b, path: y.jsonl}\n"
    )
    config = load_config(write_bytes(tmp_path, text.encode()))
    assert config.data.datasets["b"]["path"].endswith("y.jsonl")


def test_invalid_utf8_names_the_byte_its_offset_and_line(tmp_path, capsys):
    path = write_bytes(tmp_path, (HEAD + 'default_system: "caf').encode() + b'\xe9"\n')
    err = train(path, capsys)
    offset = len(HEAD) + len('default_system: "caf')
    assert (
        f"{path} is not UTF-8 text: 0xe9 at byte offset {offset} (line 2) is not valid UTF-8" in err
    )
    assert "(invalid continuation byte)" in err and "iconv -f cp1252 -t utf-8" in err


def test_utf16_without_a_bom_is_named(tmp_path, capsys):
    path = write_bytes(tmp_path, (HEAD + "learning_rate: 1e-4\n").encode("utf-16-le"))
    err = train(path, capsys)
    assert "is not UTF-8 text: 0x00 at byte offset 1 (line 1) is a NUL byte" in err
    assert "UTF-16 or UTF-32 without a byte order mark" in err


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_byte_order_mark_is_honoured(tmp_path, encoding):
    path = write_bytes(tmp_path, "learning_rate: 1e-4\ndefault_system: café\n".encode(encoding))
    config = load_config(path)
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.data.default_system == "café"


def test_alias_bomb_is_refused_quickly(tmp_path, capsys):
    # "Billion laughs": 9 levels of 9 aliases each, 9**9 strings once expanded.
    levels = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = write_bytes(tmp_path, (HEAD + "dataset: [" + ", ".join(levels) + "]\n").encode())
    err = train(path, capsys)
    assert f"{path}: its aliases (`*name`) expand to more than {MAX_VALUES:,} values" in err
    assert "billion laughs" in err


def test_recursive_alias_is_refused(tmp_path, capsys):
    err = train(write_bytes(tmp_path, (HEAD + "dataset: &x [a, *x]\n").encode()), capsys)
    assert "an alias at line 2 refers to a value that contains it" in err


def test_a_few_aliases_still_work(tmp_path):
    text = "dataset: &d identity\neval_dataset: *d\n"
    config = load_config(write_bytes(tmp_path, text.encode()))
    assert config.data.eval_dataset == "identity"


def test_a_folder_suggests_its_one_yaml_file(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    err = train(folder, capsys)
    assert f"config {folder} is a folder, not a YAML file" in err
    assert "Fix: give the path of a YAML config file" in err
    (folder / "train.yaml").write_text(HEAD)
    err = train(folder, capsys)
    assert f"Fix: did you mean {folder / 'train.yaml'}? (give the YAML file" in err
    (folder / "chat.yml").write_text(HEAD)
    assert "give one of the YAML files in it: chat.yml, train.yaml" in train(folder, capsys)


def test_a_missing_file_suggests_a_close_name(tmp_path, capsys):
    (tmp_path / "train.yaml").write_text(HEAD)
    err = train(tmp_path / "trian.yaml", capsys)
    assert f"config file {tmp_path / 'trian.yaml'} does not exist" in err
    assert f"did you mean {tmp_path / 'train.yaml'}?" in err


# ---- values out of range --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (
            "learning_rate: -1",
            "`learning_rate: -1` is out of range: learning_rate must be greater than 0",
        ),
        ("learning_rate: 0", "learning_rate must be greater than 0"),
        ("per_device_train_batch_size: -2", "per_device_train_batch_size must be at least 1"),
        ("gradient_accumulation_steps: 0", "gradient_accumulation_steps must be at least 1"),
        ("cutoff_len: 0", "`cutoff_len: 0` is out of range: cutoff_len must be at least 1"),
        ("lora_rank: 0", "lora_rank must be at least 1"),
        ("lora_dropout: 1", "lora_dropout must be from 0 up to (not including) 1"),
        (
            "val_size: 1.5",
            "val_size must be a fraction from 0 up to (not including) 1, or a whole count",
        ),
        ("val_size: -0.1", "`val_size: -0.1` is out of range"),
        ("warmup_ratio: 1.2", "warmup_ratio must be from 0 to 1"),
        ("num_train_epochs: -1", "num_train_epochs must be at least 0"),
        ("max_steps: -2", "max_steps must be at least -1"),
        ("temperature: -0.1", "temperature must be at least 0"),
        ("top_p: 0", "top_p must be greater than 0 and at most 1"),
        ("top_p: 1.5", "top_p must be greater than 0 and at most 1"),
        ("freeze_trainable_layers: 0", "freeze_trainable_layers must be any whole number except 0"),
        ("seed: -1", "seed must be from 0 to 4294967295"),
        ("api_port: 70000", "api_port must be from 0 to 65535"),
        ("learning_rate: .nan", "`learning_rate: nan` is not a finite number"),
    ],
)
def test_out_of_range_value_names_key_value_file_and_range(tmp_path, capsys, line, fragment):
    path = write_bytes(tmp_path, (HEAD + line + "\n").encode())
    err = train(path, capsys)
    assert err.startswith(f"error: {path}: ") and fragment in err, err


def test_out_of_range_fix_and_command_line_source(tmp_path, capsys):
    path = write_bytes(tmp_path, HEAD.encode())
    err = train(path, capsys, "learning_rate=-1")
    assert err.strip() == (
        "error: command line: `learning_rate: -1` is out of range: learning_rate must be greater "
        "than 0. Fix: set `learning_rate` to a value that is greater than 0 (the default is 5e-05)."
    )
    err = train(path, capsys, "--val_size", "2.5")
    assert "Fix: give `val_size` a fraction from 0 up to (not including) 1, or a whole count" in err


@pytest.mark.parametrize(
    "line",
    [
        "val_size: 0.1",
        "val_size: 200",
        "max_steps: -1",
        "seed: 0",
        "temperature: 0",
        "warmup_ratio: 1",
        "freeze_trainable_layers: -2",
    ],
)
def test_values_at_the_edges_are_accepted(tmp_path, line):
    load_config(write_bytes(tmp_path, (line + "\n").encode()))


def test_every_number_key_has_bounds_and_its_default_is_inside_them():
    import typing

    from lmforge.config.schema import SECTIONS

    unbounded = []
    for key, (section, f) in key_index().items():
        hint = str(typing.get_type_hints(SECTIONS[section])[f.name])
        bounds = f.metadata.get("bounds")
        if ("int" in hint or "float" in hint) and bounds is None:
            unbounded.append(key)
        if bounds is not None and f.default is not None:
            assert bounds.allows(f.default), key
    # 4 or 8, checked with what else loading in bits needs (config/resolve.py _check_bits)
    assert unbounded == [
        "quantization_bit",
        "ref_model_quantization_bit",
        "reward_model_quantization_bit",
    ]
