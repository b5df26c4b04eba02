"""The board's one job slot: `lmforge <command> saved.yaml` as a subprocess.

- A job runs in its own session (process group) under a small wrapper (`webui/wrap.py`) that
  ignores the stop signals itself, waits for the command and writes its exit code, so a board
  restarted while the job ran still learns how it ended.
- The job is recorded in `<workdir>/job.json` (pid, process start time, command, log file,
  output folder); a reloaded page, another browser or a restarted board reads it and
  re-attaches. A second start while one runs is refused.
- Stop sends SIGINT to the job's process group (`lmforge train` saves a resumable checkpoint at
  the next step boundary and exits 130); after `grace` seconds SIGTERM (a second signal: train
  exits at once), after another `grace` SIGKILL to the group and every descendant.
- Finished jobs are appended to `<workdir>/history.jsonl`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE = "job.json"
HISTORY = "history.jsonl"
EXIT_FILE = "exit_code"
LOG_FILE = "log.txt"
INTERRUPTED = 130


class JobRefused(Exception):
    """A start was refused (a job already runs); the message says which."""


@dataclass
class Job:
    id: str
    kind: str  # train, export, eval, predict, compare, synth, ...
    argv: list[str]  # the lmforge command's words after `lmforge`
    folder: str  # <workdir>/jobs/<id>: log.txt, exit_code
    output_dir: str | None  # where its results go (progress, reports)
    pid: int = 0
    start_time: str = ""  # /proc/<pid>/stat field 22: tells a reused pid apart
    started: float = 0.0
    ended: float | None = None
    exit_code: int | None = None
    stop_requested: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        import shlex

        return "lmforge " + " ".join(shlex.quote(w) for w in self.argv)

    @property
    def log_path(self) -> Path:
        return Path(self.folder) / LOG_FILE

    def status(self) -> str:
        """running, stopping, finished (exit 0), stopped (130 after a stop), failed."""
        if self.exit_code is None:
            return "stopping" if self.stop_requested else "running"
        if self.exit_code == 0:
            return "finished"
        return "stopped" if self.stop_requested else "failed"


def lmforge_argv() -> list[str]:
    """How to run lmforge: this interpreter with `-m lmforge` (the same install as the board)."""
    return [sys.executable, "-m", "lmforge"]


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return "?"
    after = stat.rsplit(")", 1)[1].split()
    if after[0] in ("Z", "X"):
        return None
    return after[19]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first-level first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            after = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(after[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


class JobRunner:
    """One job at a time, recorded under `workdir`. Safe to use from several threads."""

    def __init__(self, workdir: str | Path, *, grace: float = 60.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grace = grace
        self._lock = threading.RLock()
        self._popen: subprocess.Popen | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE

    def _read(self) -> Job | None:
        try:
            return Job(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, job: Job) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(job)))
        os.replace(tmp, self.state_path)

    def _alive(self, job: Job) -> bool:
        if self._popen is not None and self._popen.pid == job.pid:
            if self._popen.poll() is not None:
                return False
        return _proc_start_time(job.pid) == job.start_time

    def current(self) -> Job | None:
        """The last job (running or ended), with its end recorded once it has ended."""
        with self._lock:
            job = self._read()
            if job is None or job.exit_code is not None or self._alive(job):
                return job
            exit_file = Path(job.folder) / EXIT_FILE
            try:
                job.exit_code = int(exit_file.read_text().strip())
            except (OSError, ValueError):
                job.exit_code = -int(signal.SIGKILL)  # the wrapper itself was killed
            job.ended = time.time()
            self._write(job)
            with (self.workdir / HISTORY).open("a") as handle:
                handle.write(json.dumps(asdict(job)) + "\n")
            return job

    def running(self) -> Job | None:
        job = self.current()
        return job if job is not None and job.exit_code is None else None

    def history(self) -> list[Job]:
        path = self.workdir / HISTORY
        jobs = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    jobs.append(Job(**json.loads(line)))
                except (ValueError, TypeError):
                    continue
        return jobs

    # -- start / stop ------------------------------------------------------------------------

    def start(
        self,
        kind: str,
        args: list[str],
        *,
        output_dir: str | None = None,
        cwd: str | Path | None = None,
        env: dict | None = None,
        extra: dict | None = None,
    ) -> Job:
        """Start `lmforge <kind> <args...>`; JobRefused if a job is running."""
        with self._lock:
            busy = self.running()
            if busy is not None:
                raise JobRefused(busy.command)
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            folder = self.workdir / "jobs" / job_id
            folder.mkdir(parents=True)
            argv = [*kind.split(), *args]
            job = Job(
                job_id, kind, argv, str(folder), output_dir, started=time.time(), extra=extra or {}
            )
            wrapper = [sys.executable, "-m", "lmforge.webui.wrap", str(folder / EXIT_FILE), "--"]
            with job.log_path.open("wb") as log:
                self._popen = subprocess.Popen(
                    [*wrapper, *lmforge_argv(), *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                    start_new_session=True,  # its own process group: stop reaches every process
                )
            job.pid = self._popen.pid
            job.start_time = _proc_start_time(job.pid) or ""
            self._write(job)
            return job

    def stop(self, *, wait: bool = False) -> Job | None:
        """Ask the running job to stop (SIGINT to its group), escalating in the background."""
        with self._lock:
            job = self.running()
            if job is None:
                return None
            if job.stop_requested is None:
                job.stop_requested = time.time()
                self._write(job)
            tree = descendants(job.pid)
            self._signal(job, signal.SIGINT)
        thread = threading.Thread(target=self._escalate, args=(job, tree), daemon=True)
        thread.start()
        if wait:
            thread.join()
        return job

    def _signal(self, job: Job, sig: int, tree: list[int] = ()) -> None:
        try:
            os.killpg(job.pid, sig)  # the wrapper leads the group
        except (ProcessLookupError, PermissionError):
            pass
        for pid in tree:  # processes that left the group (own sessions)
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _escalate(self, job: Job, tree: list[int]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.time() + self.grace
            while time.time() < deadline:
                if not self._alive(job):
                    self.current()  # records the end
                    return
                time.sleep(0.2)
            self._signal(job, sig, tree + descendants(job.pid) if sig == signal.SIGKILL else ())
        while self._alive(job) and time.time() < deadline + 5:
            time.sleep(0.1)
        self.current()

    def wait(self, timeout: float | None = None) -> Job | None:
        """Until the job ends (or `timeout`); the job as it is then."""
        end = None if timeout is None else time.time() + timeout
        while (job := self.running()) is not None and (end is None or time.time() < end):
            time.sleep(0.2)
        return self.current() if job is None else job


def tail(path: str | Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of a log; progress bars' carriage returns become new lines."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    rows = [row.rsplit("\r", 1)[-1] for row in data.replace("\r\n", "\n").split("\n")]
    rows = [row for row in rows if row.strip()]
    return "\n".join(rows[-lines:])
