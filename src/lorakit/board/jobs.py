"""Long stage calls (build, evaluate, export, loading a chat model) run one at a time in a worker thread.

The machine this board is for has a few cores and one model's worth of memory: two model loads at once would
only slow both. The page polls a job for its progress and gets the result, or the user's one-paragraph error.
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from lorakit.errors import LorakitError


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"  # queued, running, done, failed
    progress: dict = field(default_factory=dict)  # done, total, label
    result: Any = None
    error: str | None = None
    error_field: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float | None = None

    def view(self) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": self.progress,
                "result": self.result, "error": self.error, "field": self.error_field,
                "elapsed_s": round((self.seconds if self.seconds is not None else time.time() - self.started), 1)}


class Jobs:
    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorakit-board-job")
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: Callable[[Callable[[int, int | None, str], None]], Any]) -> Job:
        """Run ``fn(progress)`` in the worker; ``progress(done, total, label)`` updates what the page shows."""
        with self._lock:
            job = Job(id=str(next(self._ids)), kind=kind)
            self._jobs[job.id] = job

        def progress(done: int, total: int | None = None, label: str = ""):
            job.progress = {"done": done, "total": total, "label": label}

        def work():
            job.state, job.started = "running", time.time()
            try:
                job.result = fn(progress)
                job.state = "done"
            except LorakitError as e:
                job.error, job.error_field, job.state = e.render(), e.field, "failed"
            except Exception as e:  # a bug, not the user's mistake: say so, with the trace in the board's log
                traceback.print_exc()
                job.error, job.state = f"internal error ({type(e).__name__}: {e}); see the board's log", "failed"
            finally:
                job.seconds = time.time() - job.started

        self._pool.submit(work)
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise LorakitError(f"no job {job_id!r}", field="job")
        return job

    def shutdown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
