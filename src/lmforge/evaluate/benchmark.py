"""Multiple-choice benchmarks read as their releases lay them out: MMLU, C-Eval, CMMLU, or your own.

    MMLU    data/dev/<subject>_dev.csv, data/val/<subject>_val.csv, data/test/<subject>_test.csv
            (the `data/` level may be left out), no header: question,A,B,C,D,answer
    C-Eval  dev/<subject>_dev.csv, val/<subject>_val.csv, test/<subject>_test.csv, with the
            header id,question,A,B,C,D,answer,explanation (test has no answer column)
    CMMLU   dev/<subject>.csv, test/<subject>.csv, with the header ,Question,A,B,C,D,Answer

A custom task may use any of the three layouts; the layout is recognised from the folders and
the first row of each file. Subject names and categories come from a `mapping.json` in the
benchmark folder (LLaMA-Factory's format: {subject: {name, category}}), else from the copies of
LLaMA-Factory's mappings shipped here for mmlu, ceval and cmmlu, else from the file names.

`task_dir` is the folder holding the benchmark folder named by the task (evaluation/mmlu), or
the benchmark folder itself; a name that is no local folder is a Hugging Face dataset id,
downloaded once (a repo holding `<task>.zip`, as LLaMA-Factory's, is unpacked).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import UserError
from lmforge.evaluate.prompts import CHOICES, Question

logger = logging.getLogger(__name__)

BENCHMARKS = {"mmlu": "MMLU", "ceval": "C-Eval", "cmmlu": "CMMLU"}
# A split as written after the task name -> the folder name releases use.
SPLIT_FOLDERS = {"test": "test", "val": "val", "validation": "val", "dev": "dev", "train": "dev"}
DEFAULT_SPLIT = {"ceval": "val"}  # C-Eval keeps its test answers private
LAYOUT_HELP = {
    "MMLU": "<task_dir>/mmlu/data/dev/<subject>_dev.csv and <task_dir>/mmlu/data/test/"
    "<subject>_test.csv, without a header row, columns question,A,B,C,D,answer",
    "C-Eval": "<task_dir>/ceval/dev/<subject>_dev.csv and <task_dir>/ceval/val/<subject>_val.csv "
    "with the header id,question,A,B,C,D,answer,explanation",
    "CMMLU": "<task_dir>/cmmlu/dev/<subject>.csv and <task_dir>/cmmlu/test/<subject>.csv with "
    "the header ,Question,A,B,C,D,Answer",
}
_REQUIRED = ("question", "a", "b", "c", "d")


@dataclass
class Subject:
    key: str  # the file's subject name (abstract_algebra)
    name: str  # as the prompt names it (abstract algebra, 高等数学)
    category: str | None  # STEM, Humanities, Social Sciences, Other (None: not mapped)
    questions: list[Question]
    shots: list[Question]  # the first n_shot questions of the dev split
    file: str


@dataclass
class Benchmark:
    task: str  # mmlu, ceval, cmmlu or a custom name
    split: str  # folder name: test, val or dev
    folder: Path
    layout: str  # MMLU, C-Eval or CMMLU
    subjects: list[Subject] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(s.questions) for s in self.subjects)


def parse_task(task: str) -> tuple[str, str]:
    """`mmlu_test` -> ("mmlu", "test"); `ceval` -> ("ceval", "val"); `my_bench` -> ("my_bench",
    "test"): a trailing word is the split only when it names one."""
    name, _, tail = task.rpartition("_")
    if name and tail.lower() in SPLIT_FOLDERS:
        return name, SPLIT_FOLDERS[tail.lower()]
    return task, DEFAULT_SPLIT.get(task.lower(), "test")


def default_lang(task_name: str) -> str:
    return "zh" if task_name.lower() in ("ceval", "cmmlu") else "en"


def load_benchmark(task: str, task_dir: str, n_shot: int, *, where: str | None = None) -> Benchmark:
    """The benchmark's questions of the split, with n_shot dev examples per subject; every
    file checked (layout, columns, answer letters) before any model is loaded."""
    name, split = parse_task(task)
    folder = benchmark_folder(name, task_dir, where=where)
    split_dir = _split_dir(folder, split)
    if split_dir is None:
        raise _layout_error(name, folder, f"no `{split}` folder (nor data/{split})", where)
    files = sorted(split_dir.glob("*.csv"))
    if not files:
        raise _layout_error(name, folder, f"{split_dir} holds no .csv files", where)
    layout = _layout_of(name, split_dir, files[0])
    mapping = _mapping(name, folder)
    dev_dir = _split_dir(folder, "dev") if n_shot > 0 else None
    if n_shot > 0 and dev_dir is None:
        raise _layout_error(
            name,
            folder,
            f"no `dev` folder, which holds the few-shot examples (n_shot: {n_shot})",
            where,
            extra="or set n_shot: 0",
        )
    benchmark = Benchmark(name, split, folder, layout)
    for path in files:
        key = _subject_key(path, split)
        questions = read_questions(path, layout, need_answers=True, task=name, split=split)
        shots: list[Question] = []
        if dev_dir is not None:
            dev_file = _subject_file(dev_dir, key, "dev")
            if dev_file is None:
                raise UserError(
                    f"subject `{key}` has no dev file: {dev_dir} has neither {key}_dev.csv nor "
                    f"{key}.csv, which n_shot: {n_shot} takes its examples from",
                    where=str(path),
                    fix=f"add the subject's dev file, remove {path.name}, or set n_shot: 0",
                )
            shots = read_questions(dev_file, layout, need_answers=True, task=name, split="dev")
            shots = shots[:n_shot]
        entry = mapping.get(key, {})
        benchmark.subjects.append(
            Subject(
                key=key,
                name=entry.get("name") or key.replace("_", " "),
                category=entry.get("category"),
                questions=questions,
                shots=shots,
                file=str(path),
            )
        )
    return benchmark


# ---- where the benchmark is -----------------------------------------------------------------


def benchmark_folder(name: str, task_dir: str, *, where: str | None = None) -> Path:
    """task_dir/<name> when it exists, else task_dir itself; a hub dataset id is downloaded."""
    base = Path(task_dir).expanduser()
    if base.is_dir():
        for candidate in (base / name, base / name.lower()):
            if candidate.is_dir():
                return _unzipped(candidate, name)
        return _unzipped(base, name)
    if _looks_like_hub_id(task_dir):
        return _unzipped(_download(task_dir, where), name, nested=True)
    raise UserError(
        f"task_dir `{task_dir}` is not a folder (looked in {base.resolve()})",
        where=where,
        fix=f"set task_dir to the folder that holds {name}/ as the benchmark's release lays it "
        f"out ({LAYOUT_HELP.get(BENCHMARKS.get(name.lower(), ''), LAYOUT_HELP['MMLU'])}), or "
        "to a Hugging Face dataset id",
    )


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not value.startswith((".", "/", "~"))
        and "\\" not in value
        and not os.path.splitext(value)[1]
    )


def _download(repo_id: str, where: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id, repo_type="dataset", allow_patterns=["*.csv", "*.json", "*.zip"]
        )
    except Exception as exc:  # offline, unknown repo, gated: all the same to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot download the benchmark `{repo_id}` from the Hugging Face hub "
            f"({type(exc).__name__}: {reason[:200]})",
            where=where,
            fix="check the network and the dataset id (or run once online; HF_HUB_OFFLINE=1 "
            "then uses the cached copy), or download it and set task_dir to its folder",
        ) from None
    return Path(path)


def _unzipped(folder: Path, name: str, nested: bool = False) -> Path:
    """A folder holding only `<name>.zip` (LLaMA-Factory's hub layout): the unpacked copy."""
    if nested and (folder / name).is_dir():
        folder = folder / name
    archive = folder / f"{name}.zip"
    if not archive.is_file() or _split_dir(folder, "test") or _split_dir(folder, "dev"):
        return folder
    from lmforge.paths import lmforge_home

    target = lmforge_home() / "benchmarks" / f"{name}-{archive.stat().st_size}"
    if not target.is_dir():
        staging = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        os.replace(staging, target)
    inner = target / name
    return inner if inner.is_dir() else target


def _split_dir(folder: Path, split: str) -> Path | None:
    for candidate in (folder / "data" / split, folder / split):
        if candidate.is_dir():
            return candidate
    return None


def _subject_key(path: Path, split: str) -> str:
    stem = path.stem
    return stem[: -len(split) - 1] if stem.endswith(f"_{split}") else stem


def _subject_file(folder: Path, key: str, split: str) -> Path | None:
    for candidate in (folder / f"{key}_{split}.csv", folder / f"{key}.csv"):
        if candidate.is_file():
            return candidate
    return None


def _mapping(name: str, folder: Path) -> dict[str, dict]:
    own = folder / "mapping.json"
    if own.is_file():
        path = own
    else:
        path = Path(__file__).with_name(f"{name.lower()}_mapping.json")
        if not path.is_file():
            return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read {path}: {exc}",
            fix='write it as {"subject": {"name": "shown name", "category": "STEM"}, ...}',
        ) from None
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _layout_error(
    name: str, folder: Path, problem: str, where: str | None, extra: str = ""
) -> UserError:
    layout = BENCHMARKS.get(name.lower(), "MMLU")
    try:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        held = []
    shown = ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")
    return UserError(
        f"{folder} is not a benchmark folder in the {layout} layout: {problem} (it holds: "
        f"{shown or 'nothing'})",
        where=where,
        fix=f"point task_dir at the folder holding {name}/ as the benchmark's release lays it "
        f"out: {LAYOUT_HELP[layout]}" + (f"; {extra}" if extra else ""),
    )


# ---- reading the files ----------------------------------------------------------------------


def _layout_of(name: str, split_dir: Path, first_file: Path) -> str:
    header = _first_row(first_file)
    lowered = [cell.strip().lower() for cell in header]
    if set(_REQUIRED) <= set(lowered):
        return "CMMLU" if "Question" in header or "Answer" in header else "C-Eval"
    return "MMLU"


def _first_row(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), [])


def read_questions(
    path: Path, layout: str, *, need_answers: bool, task: str = "", split: str = ""
) -> list[Question]:
    """The questions of one CSV file; a row that does not fit names the file, row and column."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if set(_REQUIRED) <= set(header):
        columns = {name: header.index(name) for name in (*_REQUIRED, "answer") if name in header}
        names = {name: rows[0][i].strip() for name, i in columns.items()}
        body = rows[1:]
        if "answer" not in columns and need_answers:
            hint = (
                f"C-Eval publishes no answers for its test split: use task: {task}_validation"
                if split == "test"
                else "add the answer column (the letter A, B, C or D of each question)"
            )
            raise UserError(
                f"{path} has no answer column (its columns are {', '.join(rows[0])})",
                fix=hint,
            )
    else:
        if len(rows[0]) != 6:
            raise UserError(
                f"{path}: row 1 has {len(rows[0])} columns, and it is not a header row naming "
                "question,A,B,C,D,answer",
                fix="write it as MMLU does (no header row, six columns: question,A,B,C,D,"
                "answer), or give it the header row question,A,B,C,D,answer",
            )
        columns = {"question": 0, "a": 1, "b": 2, "c": 3, "d": 4, "answer": 5}
        names = {"question": "question (1st)", "answer": "answer (6th)"}
        names |= {k: f"{k.upper()} ({i + 1}th)" for k, i in columns.items() if k in "abcd"}
        body = rows
    width = max(columns.values()) + 1
    questions: list[Question] = []
    for number, row in enumerate(body, start=1):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) < width:
            raise UserError(
                f"{path}: row {number} has {len(row)} columns, {width} are needed "
                f"({', '.join(names.get(k, k) for k in columns)})",
                fix='quote cells that contain commas or line breaks ("..."), and give every '
                "question its four choices and its answer",
            )
        answer = row[columns["answer"]].strip() if "answer" in columns else ""
        if "answer" in columns and answer not in CHOICES:
            raise UserError(
                f"{path}: row {number}, column `{names['answer']}`: {answer!r} is not one of "
                "A, B, C, D",
                fix="write the letter of the correct choice (A, B, C or D, in capitals) in "
                "the answer column; benchmarks here have exactly four choices",
            )
        questions.append(
            Question(
                question=row[columns["question"]],
                choices=tuple(row[columns[k]] for k in "abcd"),  # type: ignore[arg-type]
                answer=answer,
                where=f"{path}:row {number}",
            )
        )
    return questions
