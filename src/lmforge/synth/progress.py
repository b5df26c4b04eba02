"""Progress bars per stage (tqdm, with rate and ETA) on stderr; off when it is not a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Bars:
    def __init__(self, chunks: int, *, scored: bool, enabled: bool | None = None):
        disable = not (sys.stderr.isatty() if enabled is None else enabled)
        options = dict(file=sys.stderr, disable=disable, dynamic_ncols=True, smoothing=0.1)
        self.questions = tqdm(total=chunks, desc="questions (chunks)", unit="chunk", **options)
        self.answers = tqdm(total=0, desc="answers", unit="pair", **options)
        self.scores = tqdm(total=0, desc="scores", unit="pair", **options) if scored else None

    def chunk_done(self) -> None:
        self.questions.update(1)

    def add_questions(self, count: int) -> None:
        self.answers.total += count
        self.answers.refresh()
        if self.scores is not None:
            self.scores.total += count
            self.scores.refresh()

    def answer_done(self) -> None:
        self.answers.update(1)

    def score_done(self) -> None:
        if self.scores is not None:
            self.scores.update(1)

    def close(self) -> None:
        for bar in (self.questions, self.answers, self.scores):
            if bar is not None:
                bar.close()
