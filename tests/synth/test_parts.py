"""The parts of synth on their own: JSON repair, chunking, document readers, near-duplicates."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import UserError
from lmforge.synth.chunking import split_chunks
from lmforge.synth.dedupe import NearDuplicates
from lmforge.synth.documents import find_documents, html_text, read_text
from lmforge.synth.json_repair import Unreadable, parse_reply

# ---- JSON repair -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, kind, value, repairs",
    [
        ('["a", "b"]', "array", ["a", "b"], ()),
        ('```json\n["a", "b"]\n```', "array", ["a", "b"], ("code fence",)),
        ('```\n{"answer": "x"}\n```', "object", {"answer": "x"}, ("code fence",)),
        ('["a", "b",]', "array", ["a", "b"], ("trailing comma",)),
        ('{"answer": "x",\n}', "object", {"answer": "x"}, ("trailing comma",)),
        ("['a', 'b']", "array", ["a", "b"], ("single quotes",)),
        ("{'answer': 'it is'}", "object", {"answer": "it is"}, ("single quotes",)),
        ('<think>[not, this]</think>\n["a"]', "array", ["a"], ("think block",)),
        (
            'reasoning without start</think>{"answer": "x"}',
            "object",
            {"answer": "x"},
            ("think block",),
        ),
        ('["a", "b", "c', "array", ["a", "b"], ("truncated array",)),
        ('["a", "b", {"q": "c', "array", ["a", "b"], ("truncated array",)),
        ('Sure!\n{"answer": "x"}\nDone.', "object", {"answer": "x"}, ("text around the JSON",)),
        ('{"questions": ["a"]}', "array", ["a"], ("array inside an object",)),
        ('[{"answer": "x"}]', "object", {"answer": "x"}, ("object inside an array",)),
        ('"a, b" ["x, y]", "z"]', "array", ["x, y]", "z"], ("text around the JSON",)),
        (
            '{"answer": "write </think> to close"}',
            "object",
            {"answer": "write </think> to close"},
            (),
        ),
    ],
)
def test_repairs(reply, kind, value, repairs):
    parsed = parse_reply(reply, kind)
    assert parsed.value == value
    assert parsed.repairs == repairs


@pytest.mark.parametrize(
    "reply, kind, reason",
    [
        ("I cannot do that.", "array", "no JSON array"),
        ("<think>still thinking about [1, 2", "array", "never ends"),
        ('["a"] and also ["b"]', "array", "more than one"),
        ('{"answer": "cut off', "object", "cut off"),
        ("['What's this?']", "array", "cut off|no single reading"),
        ("```\n[1]\n```\n```\n[2]\n```", "array", "2 code blocks"),
        ('{"answer": "x"}', "array", "not an array"),
    ],
)
def test_unreadable(reply, kind, reason):
    with pytest.raises(Unreadable, match=reason):
        parse_reply(reply, kind)


# ---- chunking --------------------------------------------------------------------------------

MARKDOWN = (
    "# Guide\n\nIntro paragraph. " + "Filler sentence here. " * 12 + "\n\n"
    "| name | value |\n|------|-------|\n"
    + "".join(f"| row{i} | {i} |\n" for i in range(12))
    + "\n## Code\n\n```python\ndef f():\n\n    return 1\n"
    + "# comment line\n" * 10
    + "```\n\n"
    "## Last\n\nShort end.\n"
)


def test_chunks_are_spans_and_keep_blocks_whole():
    chunks = list(split_chunks("g.md", MARKDOWN, min_chars=40, max_chars=150, overlap=0))
    assert len(chunks) > 3
    for chunk in chunks:
        assert MARKDOWN[chunk.start : chunk.end] == chunk.text
    table = MARKDOWN[MARKDOWN.index("| name") : MARKDOWN.index("\n## Code")].strip()
    code = MARKDOWN[MARKDOWN.index("```python") : MARKDOWN.index("```\n\n## Last") + 3]
    assert any(table in c.text for c in chunks)  # longer than max_chars, still whole
    assert any(code in c.text for c in chunks)
    for c in chunks:  # no chunk starts or ends inside them
        for block in (table, code):
            start = MARKDOWN.index(block)
            end = start + len(block)
            assert not start < c.start < end and not start < c.end < end
    # headings start chunks
    assert any(c.text.startswith("## Code") for c in chunks)
    assert any(c.text.startswith("## Last") for c in chunks)


def test_long_paragraph_cut_at_sentences_and_overlap():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = list(split_chunks("t.txt", text, min_chars=50, max_chars=200, overlap=60))
    assert all(len(c.text) <= 200 + 60 for c in chunks)
    assert all(c.text.startswith("Sentence") and c.text.endswith(".") for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        assert after.start < before.end  # overlapping context, from a sentence start
        assert text[after.start : after.end] == after.text
    ids = [c.id for c in chunks]
    assert len(set(ids)) == len(ids)
    assert ids == [
        c.id for c in split_chunks("t.txt", text, min_chars=50, max_chars=200, overlap=60)
    ]


def test_short_sections_join():
    text = "# A\n\none.\n\n# B\n\ntwo.\n\n# C\n\n" + "three is longer. " * 10
    chunks = list(split_chunks("s.md", text, min_chars=30, max_chars=500))
    assert len(chunks) == 1


# ---- documents -------------------------------------------------------------------------------


def _pdf_bytes(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, cross-reference table computed."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_readers(tmp_path):
    pytest.importorskip("pypdf")
    docx = pytest.importorskip("docx")
    (tmp_path / "a.pdf").write_bytes(_pdf_bytes("Turbines spin at night."))
    document = docx.Document()
    document.add_heading("Wind", level=1)
    document.add_paragraph("Turbines need wind.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "speed", "12"
    document.save(tmp_path / "b.docx")
    (tmp_path / "c.html").write_text(
        "<html><head><style>x{}</style><script>var a;</script></head><body>"
        "<h2>Title</h2><p>Some <b>bold</b> text.</p><p>Next &amp; last.</p></body></html>"
    )
    (tmp_path / "d.txt").write_text("plain\r\ntext")
    assert "Turbines spin at night." in read_text(tmp_path / "a.pdf", "a.pdf")
    assert (
        read_text(tmp_path / "b.docx", "b.docx")
        == "# Wind\n\nTurbines need wind.\n\n| speed | 12 |"
    )
    assert (
        read_text(tmp_path / "c.html", "c.html") == "## Title\n\nSome bold text.\n\nNext & last.\n"
    )
    assert read_text(tmp_path / "d.txt", "d.txt") == "plain\ntext"
    files = find_documents(f"{tmp_path}/*.pdf, {tmp_path}", None, None)
    assert [f.path.name for f in files] == ["a.pdf", "b.docx", "c.html", "d.txt"]


def test_not_utf8(tmp_path):
    (tmp_path / "gbk.txt").write_bytes("中文".encode("gbk"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_text(tmp_path / "gbk.txt", "gbk.txt")


def test_documents_next_to_the_yaml(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("# x")
    (tmp_path / "docs" / ".hidden.md").write_text("# no")
    monkeypatch.chdir(tmp_path.parent)
    files = find_documents("docs", str(tmp_path / "synth.yaml"), None)
    assert [f.name for f in files] == ["docs/x.md"]


def test_html_text_keeps_headings():
    assert html_text("<h1>A</h1>b<br>c") == "# A\n\nb\nc\n"


# ---- near-duplicates -------------------------------------------------------------------------


def test_near_duplicates():
    seen = NearDuplicates(0.8)
    assert not seen.check("What is the lifetime of a solar panel?")
    assert seen.check("What is the lifetime of a solar panel ?")
    assert seen.check("what is the LIFETIME of a solar panel")
    assert not seen.check("How long does an inverter last?")
    exact = NearDuplicates(1.0)
    assert not exact.check("abc def")
    assert exact.check("ABC, def!")
    assert not exact.check("abc deg")


def test_near_duplicates_deterministic():
    texts = [json.dumps([i, i % 7]) for i in range(200)]
    runs = [[NearDuplicates(0.9).check(t) for t in texts] for _ in range(2)]
    assert runs[0] == runs[1]
