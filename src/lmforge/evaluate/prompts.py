"""The wording of multiple-choice prompts, as MMLU, C-Eval and CMMLU (and LLaMA-Factory) write it.

A question becomes one user turn: the question, one line per choice, and the answer cue; each
few-shot example is a user turn and its answer letter an assistant turn before it; the subject
line opens the first user turn. The conversation is then rendered by the model's chat template
(`ChatTemplate.encode_prompt`), as LLaMA-Factory renders it with its template.
"""

from __future__ import annotations

from dataclasses import dataclass

CHOICES = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: the text, the four choices (A-D) and the answer letter
    ("" when the split has no answers, as C-Eval's test split)."""

    question: str
    choices: tuple[str, str, str, str]
    answer: str
    where: str = ""  # file:row, for messages


@dataclass(frozen=True)
class PromptWording:
    subject_line: str  # formatted with {subject}
    choice: str  # formatted with {choice} and {content}
    answer: str  # the cue the model answers after


WORDINGS = {
    "en": PromptWording(
        subject_line="The following are multiple choice questions (with answers) about {subject}.\n\n",
        choice="\n{choice}. {content}",
        answer="\nAnswer:",
    ),
    "zh": PromptWording(
        subject_line="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
        choice="\n{choice}. {content}",
        answer="\n答案：",
    ),
}


def question_text(question: Question, lang: str) -> str:
    """The question, its choices and the answer cue."""
    wording = WORDINGS[lang]
    lines = [wording.choice.format(choice=c, content=t) for c, t in zip(CHOICES, question.choices)]
    return question.question + "".join(lines) + wording.answer


def question_messages(
    question: Question, shots: list[Question], subject_name: str, lang: str
) -> list[dict]:
    """The conversation that asks `question`: the few-shot examples answered, then the
    question (ending with the user turn, ready for the generation prompt)."""
    messages: list[dict] = []
    for shot in shots:
        messages.append({"role": "user", "content": question_text(shot, lang)})
        messages.append({"role": "assistant", "content": shot.answer})
    messages.append({"role": "user", "content": question_text(question, lang)})
    subject_line = WORDINGS[lang].subject_line.format(subject=subject_name)
    messages[0] = {"role": "user", "content": subject_line + messages[0]["content"]}
    return messages
