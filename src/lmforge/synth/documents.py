"""The `documents` key -> the files it names -> their text, one document at a time.

Files, folders (read recursively, in sorted order) and globs. .md, .markdown and .txt are read
as they are, .html/.htm as their visible text (standard library), .pdf through pypdf and .docx
through python-docx (the `synth` extra; asked for only when such a file is read).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from lmforge.errors import UserError
from lmforge.text_encoding import bom_encoding

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
HTML_SUFFIXES = (".html", ".htm")
SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + (".pdf", ".docx")
EXTRA = "pip install 'lmforge[synth]'"


class MissingExtra(UserError):
    """A reader's library is not installed: every such file would fail, so this stops."""


@dataclass(frozen=True)
class DocumentFile:
    path: Path
    name: str  # shown in provenance: the path as found, relative to its root


@dataclass(frozen=True)
class Document:
    name: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def find_documents(documents: str | None, yaml_path: str | None, where: str | None) -> list:
    """Every file the `documents` key names, in a stable order; a name that matches nothing,
    or only files of other kinds, is an error naming it."""
    if not documents or not documents.strip():
        raise UserError(
            "`documents` is not set: synth needs the documents to write questions about",
            where=where,
            fix="add `documents: docs/` (files, folders or globs, comma-separated) to the config",
        )
    found: dict[Path, DocumentFile] = {}
    base = Path(yaml_path).resolve().parent if yaml_path else None
    for entry in [e.strip() for e in documents.split(",") if e.strip()]:
        matches = _expand(entry, base)
        if not matches:
            looked = os.path.abspath(entry)
            if base is not None and not Path(entry).is_absolute():
                looked += f" and {base / entry}"
            raise UserError(
                f"`documents: {entry}` matches no file or folder (looked for {looked})",
                where=where,
                fix="correct the path; a relative path is read from the working directory, "
                "or next to the YAML file",
            )
        files = []
        for match in matches:
            if match.is_dir():
                files += [
                    DocumentFile(p, str(Path(entry) / p.relative_to(match)))
                    for p in sorted(match.rglob("*"))
                    if p.is_file() and p.suffix.lower() in SUFFIXES and not _hidden(p, match)
                ]
            elif match.suffix.lower() in SUFFIXES:
                files.append(
                    DocumentFile(match, str(Path(entry)) if len(matches) == 1 else str(match))
                )
            elif not glob.has_magic(entry):
                raise UserError(
                    f"`documents: {entry}` is a {match.suffix or 'suffix-less'} file, which synth "
                    "does not read",
                    where=where,
                    fix=f"give files ending in {', '.join(SUFFIXES)} (convert others to .txt)",
                )
        if not files:
            raise UserError(
                f"`documents: {entry}` holds no file synth reads ({', '.join(SUFFIXES)})",
                where=where,
                fix="point `documents` at the files, or convert them to .md or .txt",
            )
        for f in files:
            found.setdefault(f.path.resolve(), f)
    return list(found.values())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _expand(entry: str, base: Path | None) -> list[Path]:
    candidates = [Path(entry).expanduser()]
    if base is not None and not candidates[0].is_absolute():
        candidates.append(base / entry)
    for candidate in candidates:
        if glob.has_magic(str(candidate)):
            matches = sorted(Path(p) for p in glob.glob(str(candidate), recursive=True))
            if matches:
                return matches
        elif candidate.exists():
            return [candidate]
    return []


def read_documents(files: list[DocumentFile], unreadable: list[str] | None = None) -> Iterator:
    """The documents' texts, one at a time. With `unreadable`, a file that cannot be read
    (damaged PDF, not UTF-8, ...) is listed there with the reason instead of raising."""
    for f in files:
        try:
            yield Document(f.name, read_text(f.path, f.name))
        except UserError as error:
            if unreadable is None or isinstance(error, MissingExtra):
                raise
            unreadable.append(error.format())


def read_text(path: Path, name: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf_text(path, name)
    if suffix == ".docx":
        return _docx_text(path, name)
    text = _decode(path.read_bytes(), name)
    if suffix in HTML_SUFFIXES:
        return html_text(text)
    return text.replace("\r\n", "\n")


def _decode(data: bytes, name: str) -> str:
    bom = bom_encoding(data[:4])
    codec, skip = bom if bom else ("utf-8", 0)
    try:
        return data[skip:].decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
            f"line {line})",
            fix="save the file as UTF-8 (for example `iconv -f GBK -t UTF-8`)",
        ) from None


def _pdf_text(path: Path, name: str) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise MissingExtra(f"{name} is a PDF, and reading PDFs needs pypdf", fix=EXTRA) from None
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds for a damaged file
        raise UserError(
            f"cannot read the PDF {name}: {exc}",
            fix="check that the file opens in a PDF viewer, or convert it to text",
        ) from None
    return "\n\n".join(p for p in pages if p)


def _docx_text(path: Path, name: str) -> str:
    try:
        import docx
    except ImportError:
        raise MissingExtra(
            f"{name} is a Word file, and reading it needs python-docx", fix=EXTRA
        ) from None
    try:
        document = docx.Document(str(path))
    except Exception as exc:
        raise UserError(
            f"cannot read the Word file {name}: {exc}",
            fix="check that the file opens in Word (.doc files must be saved as .docx)",
        ) from None
    parts = []
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            text = "".join(t.text or "" for t in block.iter() if t.tag.endswith("}t"))
            style = block.find(".//{*}pStyle")
            level = _heading_level(
                style.get(f"{{{block.nsmap['w']}}}val") if style is not None else ""
            )
            if text.strip():
                parts.append(("#" * level + " " if level else "") + text)
        elif tag == "tbl":
            rows = []
            for row in block.iter(f"{{{block.nsmap['w']}}}tr"):
                cells = [
                    "".join(t.text or "" for t in cell.iter() if t.tag.endswith("}t")).strip()
                    for cell in row.iter(f"{{{block.nsmap['w']}}}tc")
                ]
                rows.append("| " + " | ".join(cells) + " |")
            if rows:
                parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _heading_level(style: str) -> int:
    lowered = (style or "").lower().replace(" ", "")
    if lowered.startswith("heading") and lowered[7:].isdigit():
        return min(int(lowered[7:]), 6)
    return 1 if lowered == "title" else 0


class _TextParser(HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "section", "article", "pre", "table", "ul", "ol"}
    HEADINGS = {f"h{i}": i for i in range(1, 7)}
    SKIP = {"script", "style", "head", "noscript", "template"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.HEADINGS:
            self.parts.append("\n\n" + "#" * self.HEADINGS[tag] + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_text(html: str) -> str:
    """The visible text of an HTML page, headings as Markdown headings, blocks as paragraphs."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    lines = [line.strip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"
