"""Each bad input gives a one-paragraph error with the fix, exit code 2, and writes nothing."""

import json

import pytest
import yaml

from conftest import TOY_RECORDS, write_alpaca_dataset
from lmforge.cli import main


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    settings = {
        "model_name_or_path": str(tiny_model_dir),
        "template": "gemma",
        "dataset": "toy",
        "dataset_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 1,
    }
    return tmp_path, settings


def run(tmp_path, settings, capsys, *extra):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(settings))
    code = main(["train", str(path), *extra])
    err = capsys.readouterr().err
    return code, err


def assert_one_paragraph(code, err, *fragments):
    assert code == 2
    assert err.startswith("error: ") and "Fix: " in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_missing_dataset_file(setup, capsys):
    tmp_path, settings = setup
    (tmp_path / "data" / "toy.json").unlink()
    code, err = run(tmp_path, settings, capsys)
    assert_one_paragraph(code, err, "toy.json does not exist", "dataset `toy`")
    assert not (tmp_path / "out").exists()


def test_dataset_not_in_registry(setup, capsys):
    tmp_path, settings = setup
    code, err = run(tmp_path, settings, capsys, "dataset=tyo")
    assert_one_paragraph(code, err, "dataset `tyo` is not in", "did you mean `toy`")
    assert not (tmp_path / "out").exists()


def test_unknown_template(setup, capsys):
    tmp_path, settings = setup
    code, err = run(tmp_path, settings, capsys, "template=gemma9")
    assert_one_paragraph(code, err, "unknown template `gemma9`", "gemma")
    assert not (tmp_path / "out").exists()


def test_model_path_that_does_not_exist(setup, capsys):
    tmp_path, settings = setup
    code, err = run(tmp_path, settings, capsys, f"model_name_or_path={tmp_path}/no-such-model")
    assert_one_paragraph(code, err, "no-such-model")
    assert not (tmp_path / "out").exists()


def test_output_dir_not_empty(setup, capsys):
    tmp_path, settings = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run(tmp_path, settings, capsys)
    assert_one_paragraph(
        code, err, "is not empty", "overwrite_output_dir", "resume_from_checkpoint"
    )
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_broken_json_names_file_and_line(setup, capsys):
    tmp_path, settings = setup
    (tmp_path / "data" / "toy.json").write_text(
        '[\n{"instruction": "a", "output": "b"},\n{oops}\n]'
    )
    code, err = run(tmp_path, settings, capsys)
    assert_one_paragraph(code, err, "toy.json:3:2: not valid JSON")


def test_missing_column_names_record_and_field(setup, capsys):
    tmp_path, settings = setup
    records = [{"instruction": "a", "output": "b"}, {"instruction": "c"}]
    (tmp_path / "data" / "toy.json").write_text(json.dumps(records))
    code, err = run(tmp_path, settings, capsys)
    assert_one_paragraph(code, err, "toy.json:record 1:output: missing or empty")
