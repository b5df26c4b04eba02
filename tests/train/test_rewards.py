"""GRPO's rewards: built-in checks on fixed text, weights, and the user's module:function with
the errors a wrong one gives."""

import sys

import pytest
import yaml

from lmforge.config.schema import MethodConfig
from lmforge.data.sample import Sample
from lmforge.data.templates.named import get_template
from lmforge.errors import UserError
from lmforge.train.rewards.functions import (
    RewardBatch,
    build_reward_terms,
    exact_match,
    last_number,
    numeric_match,
    parse_reward_funcs,
    regex_match,
    score_terms,
)
from lmforge.train.trainers.rollout import prompt_row


@pytest.fixture(autouse=True)
def forget_test_modules():
    """Each test writes its own modules: none may come from another test's sys.modules."""
    yield
    for name in ("my_rewards", "broken", "needs_dep", "short"):
        sys.modules.pop(name, None)


def batch(completions, references=None, **columns) -> RewardBatch:
    n = len(completions)
    return RewardBatch(
        prompts=["q"] * n,
        completions=list(completions),
        completion_ids=[[1]] * n,
        references=list(references or [None] * n),
        columns={k: list(v) for k, v in columns.items()},
    )


def terms(tmp_path=None, **method):
    source = str(tmp_path / "train.yaml") if tmp_path else None
    return build_reward_terms(MethodConfig(**method), source)


def test_exact_match_ignores_whitespace_and_case():
    assert exact_match("  Paris\n", "paris") == 1.0
    assert exact_match("New   York", "new york") == 1.0
    assert exact_match("Paris.", "Paris") == 0.0
    assert exact_match("Paris", None) == 0.0


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("So the answer is 1,234.", "#### 1234", 1.0),
        ("3 apples and then 3.50", "3.5", 1.0),
        ("It is -2", "2", 0.0),
        ("no number here", "7", 0.0),
        ("7", "the reference has none", 0.0),
        ("first 5 then 6", "6", 1.0),  # the last number counts
    ],
)
def test_numeric_match_compares_the_last_numbers(completion, reference, expected):
    assert numeric_match(completion, reference) == expected


def test_last_number():
    assert last_number("a 1,000.5 b") == 1000.5
    assert last_number("x=-.5") == -0.5
    assert last_number("none") is None


def test_regex_match_with_reward_regex_and_with_reference_patterns():
    assert regex_match("<answer>4</answer>", r"<answer>\d+</answer>") == 1.0
    (term,) = terms(reward_funcs="regex_match", reward_regex=r"^\d+$")
    assert term.score(batch(["42", "42 apples"])) == [1.0, 0.0]
    # Without reward_regex each sample's reference answer is its pattern.
    (term,) = terms(reward_funcs="regex_match")
    assert term.score(batch(["yes sir", "nope"], ["^(yes|yep)", "^(yes|yep)"])) == [1.0, 0.0]


def test_invalid_reward_regex_is_a_user_error():
    with pytest.raises(UserError, match="reward_regex `\\(` is not a valid regular expression"):
        terms(reward_funcs="regex_match", reward_regex="(")


def test_rewards_are_summed_with_weights():
    assert parse_reward_funcs("exact_match, numeric_match*0.5") == [
        ("exact_match", 1.0),
        ("numeric_match", 0.5),
    ]
    found = terms(reward_funcs="exact_match*2, numeric_match*0.5")
    totals, per_term = score_terms(found, batch(["12", "the answer is 12", "x"], ["12"] * 3))
    assert totals == [2.5, 0.5, 0.0]
    assert per_term == {"exact_match": [1.0, 0.0, 0.0], "numeric_match": [1.0, 1.0, 0.0]}


def test_bad_weight_and_unknown_builtin():
    with pytest.raises(UserError, match="weight that is not a number"):
        parse_reward_funcs("exact_match*two")
    with pytest.raises(UserError, match="unknown reward `exact_mach`.*did you mean `exact_match`"):
        terms(reward_funcs="exact_mach")


def write_module(folder, name="my_rewards", body=None):
    body = body or (
        "def has_answer(prompts, completions, completion_ids, answer, **columns):\n"
        "    return [float(a in c) if a else None for c, a in zip(completions, answer)]\n"
        "LIMIT = 3\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(body)
    return path


def test_module_function_beside_the_yaml_gets_the_columns(tmp_path):
    write_module(tmp_path)
    (term,) = terms(tmp_path, reward_funcs="my_rewards:has_answer")
    got = term.score(batch(["it is 4", "5", "?"], answer=["4", "4", None], other=[1, 2, 3]))
    assert got == [1.0, 0.0, None]
    assert score_terms([term], batch(["?"], answer=[None]))[0] == [0.0]  # None counts as 0


def test_file_path_function(tmp_path):
    path = write_module(tmp_path / "rewards_dir", name="rw")
    (term,) = terms(tmp_path, reward_funcs=f"{path}:has_answer")
    assert term.score(batch(["4"], answer=["4"])) == [1.0]
    (term,) = terms(tmp_path, reward_funcs="rewards_dir/rw.py:has_answer")  # relative to YAML
    assert term.score(batch(["4"], answer=["4"])) == [1.0]


@pytest.mark.parametrize(
    "value, message",
    [
        ("no_such_module_xyz:f", "cannot import module `no_such_module_xyz`"),
        ("my_rewards:has_anwser", "module `my_rewards` has no `has_anwser`"),
        ("my_rewards:LIMIT", "`LIMIT` is a int, not a function"),
        ("missing.py:f", "missing.py does not exist"),
        ("broken:f", "importing it failed with ZeroDivisionError"),
        ("needs_dep:f", "importing it failed with ModuleNotFoundError"),
    ],
)
def test_reward_function_errors_name_the_value_and_the_fix(tmp_path, value, message):
    write_module(tmp_path)
    write_module(tmp_path, "broken", "x = 1 / 0\n")
    write_module(tmp_path, "needs_dep", "import not_installed_dep_xyz\n")
    with pytest.raises(UserError, match="Fix: ") as caught:
        terms(tmp_path, reward_funcs=value)
    assert message in str(caught.value)
    assert value in str(caught.value)
    assert "train.yaml" in str(caught.value)  # where: the config file


@pytest.mark.parametrize(
    "value, what",
    [
        ("os:system", "a module of Python's standard library"),
        ("subprocess:run", "a module of Python's standard library"),
        ("builtins:eval", "a module built into Python"),
        ("sys:exit", "a module built into Python"),
        ("yaml:safe_load", "an installed package"),
    ],
)
def test_names_outside_the_users_files_are_refused(tmp_path, value, what):
    with pytest.raises(UserError) as caught:
        terms(tmp_path, reward_funcs=value)
    message = str(caught.value)
    assert f"reward_funcs: `{value}` names `{value.split(':')[0]}`, {what}" in message
    assert "only from your own files" in message and "Fix: write the function" in message


def test_a_path_into_the_standard_library_or_site_packages_is_refused(tmp_path):
    import os

    for value in (f"{os.__file__}:system", f"{yaml.__file__}:safe_load"):
        with pytest.raises(UserError, match="of an installed package; reward functions") as caught:
            terms(tmp_path, reward_funcs=value)
        assert value in str(caught.value) and "Fix: " in str(caught.value)


def test_a_module_is_looked_up_beside_the_yaml_only(tmp_path, monkeypatch):
    write_module(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")  # the current folder no longer counts
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))  # nor does sys.path
    with pytest.raises(UserError, match="cannot import module `my_rewards`") as caught:
        terms(tmp_path / "config", reward_funcs="my_rewards:has_answer")
    assert "elsewhere/my_rewards.py is not looked up" in str(caught.value)
    (term,) = terms(tmp_path / "elsewhere", reward_funcs="my_rewards:has_answer")
    assert term.score(batch(["4"], answer=["4"])) == [1.0]


def test_a_package_module_and_its_sibling_imports(tmp_path):
    write_module(tmp_path / "pkg", "helpers", "def ok(c):\n    return float(c == 'ok')\n")
    write_module(
        tmp_path / "pkg",
        "scores",
        "import helpers\n"  # beside it, as when the file runs as a script
        "def f(prompts, completions, **kw):\n    return [helpers.ok(c) for c in completions]\n",
    )
    path_before = list(sys.path)
    (term,) = terms(tmp_path, reward_funcs="pkg.scores:f")
    assert term.score(batch(["ok", "no"])) == [1.0, 0.0]
    assert sys.path == path_before
    sys.modules.pop("helpers", None)


COUNTING = (
    "from pathlib import Path\n"
    "IMPORTS = Path(__file__).with_suffix('.imports')\n"
    "IMPORTS.write_text(IMPORTS.read_text() + 'x' if IMPORTS.exists() else 'x')\n"
    "def f(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"
)


@pytest.mark.parametrize("form", ["counting:f", "counting.py:f"])
def test_a_file_runs_once_however_often_the_terms_are_built(tmp_path, form):
    path = write_module(tmp_path, "counting", COUNTING)
    for _ in range(3):  # the check, the stage's data step and the trainer each build them
        terms(tmp_path, reward_funcs=form)
    assert path.with_suffix(".imports").read_text() == "x"
    path.write_text(COUNTING + "# changed\n")  # an edited file is loaded afresh
    terms(tmp_path, reward_funcs=form)
    assert path.with_suffix(".imports").read_text() == "xx"


def test_did_you_mean_for_a_misspelt_function(tmp_path):
    write_module(tmp_path)
    with pytest.raises(UserError, match="did you mean `my_rewards:has_answer`"):
        terms(tmp_path, reward_funcs="my_rewards:has_anwser")


def test_a_function_returning_the_wrong_count_is_named(tmp_path):
    write_module(tmp_path, "short", "def f(prompts, completions, **kw):\n    return [1.0]\n")
    (term,) = terms(tmp_path, reward_funcs="short:f")
    with pytest.raises(UserError, match="`short:f` returned 1 rewards for 2 completions"):
        score_terms([term], batch(["a", "b"]))


def test_prompt_row_reference_answer(tiny_tokenizer):
    template = get_template("gemma")
    sample = Sample([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    row = prompt_row(
        sample, template, tiny_tokenizer, prompt_budget=100, answer_column="answer", record={}
    )
    assert row["reference"] == "4" and row["columns"]["answer"] == "4"  # the assistant answer
    assert row["prompt"] == "2+2?" and row["conversation"]["messages"][-1]["role"] == "user"
    text = tiny_tokenizer.decode(row["prompt_ids"])
    assert text.endswith("<start_of_turn>model\n") and "4" not in text.split("2+2?")[1]
    row = prompt_row(
        sample,
        template,
        tiny_tokenizer,
        prompt_budget=5,
        answer_column="answer",
        record={"answer": 4, "id": 7},
    )
    assert row["reference"] == "4" and row["columns"]["id"] == 7  # the column wins
    assert row["truncated"] and len(row["prompt_ids"]) == 5
