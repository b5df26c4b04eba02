import json
from pathlib import Path
from unittest.mock import ANY

import pytest

from lmforge.data.sources import readers
from lmforge.data.sources.readers import MalformedLine, expand_paths, iter_records, read_records
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
    with pytest.raises(UserError, match=r"d\.jsonl:2: not valid JSON \(.* at column 9\)") as info:
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
    assert next(records)[1:] == (1, MalformedLine(2, ANY, ANY))


# ---- malformed lines: reported, and reading goes on ----------------------------------------


def test_every_malformed_jsonl_line_is_yielded_and_reading_goes_on(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(RECORDS[0]), "{oops}", "", '{"instruction": "e",', json.dumps(RECORDS[1])]
    path.write_text("\n".join(lines) + "\n")
    found = [(index, record) for _, index, record in iter_records([path])]
    assert [index for index, _ in found] == [0, 1, 2, 3]  # the blank line is not a record
    assert found[0][1] == RECORDS[0] and found[3][1] == RECORDS[1]
    bad = [record for _, record in found if isinstance(record, MalformedLine)]
    assert [(b.line, b.reason) for b in bad] == [
        (2, "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (4, "not valid JSON (Expecting property name enclosed in double quotes at column 21)"),
    ]
    with pytest.raises(UserError, match=r"d\.jsonl:2: not valid JSON"):
        read_records(path)  # the list API raises the first


def test_csv_row_with_too_many_cells_is_one_bad_row(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,output\na,b,c\nd,e\n")
    found = [record for _, _, record in iter_records([tmp_path / "d.csv"])]
    assert found[1] == {"instruction": "d", "output": "e"}
    assert found[0] == MalformedLine(2, ANY, ANY) and "more cells" in found[0].reason


# ---- encodings ------------------------------------------------------------------------------

UNICODE_RECORDS = [
    {"instruction": "héllo 日本", "output": "wörld"},
    {"instruction": "q", "output": "a"},
]


def encoded_files(tmp_path, encoding: str, bom: bool = True) -> dict[str, Path]:
    texts = {
        "d.json": json.dumps(UNICODE_RECORDS, ensure_ascii=False, indent=1),
        "d.jsonl": "\n".join(json.dumps(r, ensure_ascii=False) for r in UNICODE_RECORDS) + "\n",
        "d.csv": "instruction,output\r\nhéllo 日本,wörld\r\nq,a\r\n",
        "d.txt": "héllo 日本\r\n\nwörld\n",
    }
    codec = encoding if bom else encoding + "-le"
    paths = {}
    for name, text in texts.items():
        paths[name] = tmp_path / f"{encoding}-{name}"
        paths[name].write_bytes(text.encode(codec))
    return paths


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32", "utf-16-be"])
def test_utf16_and_utf32_files_with_a_bom_are_read(tmp_path, encoding):
    if encoding == "utf-16-be":  # "utf-16-be" writes no BOM: add a big-endian one
        paths = encoded_files(tmp_path, "utf-16-be", bom=True)
        for path in paths.values():
            path.write_bytes(b"\xfe\xff" + path.read_bytes())
    else:
        paths = encoded_files(tmp_path, encoding)
    for name in ("d.json", "d.jsonl", "d.csv"):
        assert read_records(paths[name]) == UNICODE_RECORDS, (encoding, name)
    assert read_records(paths["d.txt"]) == [{"text": "héllo 日本"}, {"text": "wörld"}]


def test_utf16_without_a_bom_is_told_by_its_nul_bytes(tmp_path):
    paths = encoded_files(tmp_path, "utf-16", bom=False)
    assert read_records(paths["d.jsonl"]) == UNICODE_RECORDS


@pytest.mark.parametrize("chunk", [1 << 20, 7, 1])
def test_invalid_utf8_names_file_line_and_byte_offset(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers, "_CHUNK", chunk)  # the offset is right across chunk borders
    first = json.dumps(RECORDS[0]).encode() + b"\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(first + b'{"instruction": "caf\xe9", "output": "x"}\n')
    offset = len(first) + len('{"instruction": "caf')
    with pytest.raises(UserError) as info:
        read_records(path)
    message = str(info.value)
    assert f"d.jsonl:2: not valid UTF-8: 0xe9 at byte offset {offset}" in message
    assert "save the file as UTF-8" in message and "iconv" in message
    for name in ("d.txt", "d.csv", "d.json"):  # every text format reads the same way
        (tmp_path / name).write_bytes(b"instruction,output\n\xff,b\n")
        with pytest.raises(UserError, match=rf"{name}:2: not valid UTF-8: 0xff at byte offset 19"):
            read_records(tmp_path / name)


def test_a_file_cut_inside_a_character_and_bad_utf16(tmp_path):
    (tmp_path / "cut.txt").write_bytes(b"ok\nab\xc3")
    with pytest.raises(UserError, match=r"cut\.txt:2: not valid UTF-8: 0xc3 at byte offset 5"):
        read_records(tmp_path / "cut.txt")
    # A lone surrogate is not UTF-16.
    (tmp_path / "s.txt").write_bytes(b"\xff\xfe" + "a\n".encode("utf-16-le") + b"\x00\xd8a\x00")
    with pytest.raises(UserError, match=r"s\.txt:2: not valid UTF-16 little-endian: .* offset 6"):
        read_records(tmp_path / "s.txt")
