"""Reward functions for examples/grpo/grpo.yaml, in TRL's shape: called with keywords,
one float per completion. `answer` is the dataset column of that name."""


def concise(prompts, completions, **columns):
    """1 for an answer of one short line, less the longer it rambles."""
    return [1.0 if len(c.split()) <= 12 and "\n" not in c.strip() else 0.0 for c in completions]


def mentions_answer(prompts, completions, answer, **columns):
    """1 when the reference number appears anywhere in the completion (partial credit that
    numeric_match, which wants it as the last number, does not give)."""
    return [float(str(a) in c) for c, a in zip(completions, answer)]
