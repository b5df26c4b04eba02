import json

import pytest

from lmforge.data.sources.readers import expand_paths, iter_records, read_records
from lmforge.errors import UserError

RECORDS = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]


def test_json_list_jsonl_and_json_lines_saved_as_json(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(RECORDS, indent=2))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    (tmp_path / "c.json").write_text("\n".join(json.dumps(r) for r in RECORDS))
    for name in ("a.json", "b.jsonl", "c.json"):
        assert read_records(tmp_path / name) == RECORDS, name


def test_csv(tmp_path):
    (tmp_path / "d.csv").write_text('instruction,output\na,b\n"c, with comma",d\n')
    assert read_records(tmp_path / "d.csv") == [
        {"instruction": "a", "output": "b"},
        {"instruction": "c, with comma", "output": "d"},
    ]


def test_parquet_and_arrow_file_and_stream(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(RECORDS)
    pq.write_table(table, tmp_path / "d.parquet")
    with (
        pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as w,
    ):
        w.write_table(table)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    for name in ("d.parquet", "f.arrow", "s.arrow"):
        assert read_records(tmp_path / name) == RECORDS, name


def test_datasets_save_to_disk_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"))
    assert read_records(tmp_path / "saved") == RECORDS


def test_txt_one_record_per_non_blank_line(tmp_path):
    (tmp_path / "t.txt").write_text("first line\n\nsecond line\n")
    assert read_records(tmp_path / "t.txt") == [{"text": "first line"}, {"text": "second line"}]


def test_folder_of_one_type_glob_and_list(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "2.jsonl").write_text(json.dumps(RECORDS[1]))
    (folder / "1.json").write_text(json.dumps([RECORDS[0]]))
    (folder / ".hidden.csv").write_text("x\n1\n")
    (folder / "README.md").write_text("not data")
    assert read_records(folder) == RECORDS
    assert [p.name for p in expand_paths([folder / "*.json*"])] == ["1.json", "2.jsonl"]
    found = list(iter_records([folder / "2.jsonl", folder / "1.json"]))
    assert [(source.endswith("2.jsonl"), index) for source, index, _ in found] == [
        (True, 0),
        (False, 0),
    ]


def test_folder_mixing_types_is_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(RECORDS))
    (tmp_path / "b.csv").write_text("instruction,output\na,b\n")
    with pytest.raises(UserError, match=r"mixes file types \(.csv, .json\)"):
        read_records(tmp_path)


def test_broken_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{oops}\n]')
    with pytest.raises(UserError, match=r"d\.json:3:2: not valid JSON"):
        read_records(path)
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": 2,}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:2:\d+: not valid JSON") as info:
        read_records(path)
    assert "each line must be one complete JSON object" in str(info.value)


def test_csv_row_with_too_many_cells(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,output\na,b,c\n")
    with pytest.raises(UserError, match=r"d\.csv:2: a row has more cells"):
        read_records(tmp_path / "d.csv")


@pytest.mark.parametrize("name", ["e.json", "e.jsonl", "e.csv", "e.txt"])
def test_empty_file_is_an_error(tmp_path, name):
    (tmp_path / name).write_text("[]" if name == "e.json" else ("a,b\n" if name == "e.csv" else ""))
    with pytest.raises(UserError, match=f"{name} holds no records"):
        read_records(tmp_path / name)


def test_unsupported_type_and_damaged_parquet(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(UserError, match="unsupported file type `.xlsx`"):
        read_records(tmp_path / "d.xlsx")
    (tmp_path / "d.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="is not a readable parquet file"):
        read_records(tmp_path / "d.parquet")


def test_records_are_read_lazily(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{broken\n")
    records = iter_records([path])
    assert next(records)[2] == RECORDS[0]  # the broken line is only met when reached
    with pytest.raises(UserError, match=r"d\.jsonl:2:"):
        next(records)
