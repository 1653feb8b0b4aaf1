"""How the built-in server takes concurrent requests: a bounded queue in front of one generation worker.

Every request becomes a ``Job``. ``Scheduler.submit`` refuses it at once when ``max_queue`` jobs already wait
(the server answers 429 with Retry-After: a full server says so instead of holding the connection). One worker
thread owns the model: it takes the oldest job and, with it, every waiting job that shares its weights and
sampling (the same adapter, the same temperature), up to ``max_batch``, and generates for all of them in one
batched ``generate`` call. Each job's tokens are turned into text as they come (``Output``): its own
``max_tokens``, ``stop`` strings, deadline and a disconnected client end that job alone, and the batch goes on
for the others. A job still waiting at its deadline is answered 504 and never reaches the model.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server's queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    system: str  # the served name ("law", "law+rag", …)
    key: tuple  # jobs with the same key may share a batch
    max_tokens: int
    temperature: float
    stop: list[str]
    deadline: float  # time.monotonic() after which the job is cut
    emit: Callable[[tuple], None]  # receives ("text", str), ("done", dict) or ("error", status, message)
    messages: list[dict] | None = None  # chat: messages; completions: None and ``prompt`` is raw text
    prompt: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)


class Output:
    """One job's generated tokens → text to send: incomplete UTF-8 is held back, ``stop`` strings cut the text
    (and the text that could still grow into one is held back until it cannot), limits end the job."""

    def __init__(self, job: Job, decode: Callable[[list[int]], str], stop_ids: set[int], prompt_tokens: int):
        self.job, self.decode, self.stop_ids = job, decode, stop_ids
        self.prompt_tokens = prompt_tokens
        self.ids: list[int] = []
        self.text = ""  # decoded so far (up to a stop string)
        self.sent = 0  # characters of ``text`` already emitted
        self.finish: str | None = None
        self.timed_out = False
        self.hold = max((len(s) for s in job.stop), default=1) - 1

    @property
    def done(self) -> bool:
        return self.finish is not None

    def add(self, token: int) -> None:
        if self.done:
            return
        self.ids.append(token)
        if token in self.stop_ids:
            self.finish = "stop"
        else:
            text = self.decode([t for t in self.ids if t not in self.stop_ids])
            cut = min((i for i in (text.find(s) for s in self.job.stop if s) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish = text[:cut], "stop"
            else:
                self.text = text
        if not self.done:
            if len(self.ids) >= self.job.max_tokens:
                self.finish = "length"
            elif time.monotonic() > self.job.deadline:
                self.finish, self.timed_out = "length", True
            elif self.job.cancelled.is_set():
                self.finish = "cancelled"
        self._send()

    def _send(self) -> None:
        end = len(self.text) if self.done else len(self.text) - self.hold
        while end > self.sent and self.text[end - 1] == "\ufffd":  # a character whose bytes are not all here yet
            end -= 1
        if end > self.sent:
            self.job.emit(("text", self.text[self.sent:end]))
            self.sent = end

    def close(self, finish: str = "length", extra: dict | None = None) -> dict:
        """Send the job's result (the engine stopped generating: its own limit or the end of the batch)."""
        if not self.done:
            self.finish = finish
        self._send()
        result = {"text": self.text, "finish_reason": "length" if self.finish == "cancelled" else self.finish,
                  "prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.ids),
                  "timed_out": self.timed_out, **(extra or {})}
        self.job.emit(("done", result))
        return result


class Scheduler:
    """The bounded queue and the worker thread. ``run_batch(jobs)`` is the engine: it generates for jobs that
    share a key and calls ``Job.emit``; it may raise, and the jobs are then answered 500."""

    def __init__(self, run_batch: Callable[[list[Job]], None], *, max_queue: int = 32, max_batch: int = 8):
        self.run_batch, self.max_queue, self.max_batch = run_batch, max_queue, max_batch
        self.waiting: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.busy = 0  # jobs being generated now
        self.job_seconds = 2.0  # running mean of seconds per batch, for Retry-After
        self.served = self.failed = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._work, name="lorakit-generate", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                batches = len(self.waiting) // self.max_batch + 1
                raise QueueFull(max(1, round(batches * self.job_seconds)))
            self.waiting.append(job)
            self.cond.notify()

    def stats(self) -> dict:
        with self.cond:
            return {"waiting": len(self.waiting), "generating": self.busy, "max_queue": self.max_queue,
                    "max_batch": self.max_batch, "served": self.served, "failed": self.failed}

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout=10)

    def _take(self) -> list[Job]:
        """The oldest job and the waiting jobs that may share its batch; expired or cancelled ones are answered."""
        with self.cond:
            while not self.waiting and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return []
            now = time.monotonic()
            batch: list[Job] = []
            keep: collections.deque[Job] = collections.deque()
            while self.waiting:
                job = self.waiting.popleft()
                if job.cancelled.is_set():
                    continue
                if now > job.deadline:
                    job.emit(("error", 504, "the request timed out while waiting in the queue"))
                    continue
                if len(batch) < self.max_batch and (not batch or job.key == batch[0].key):
                    batch.append(job)
                else:
                    keep.append(job)
            self.waiting = keep
            self.busy = len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if self.stopped:
                return
            if not batch:
                continue
            t0 = time.monotonic()
            try:
                self.run_batch(batch)
                self.served += len(batch)
            except Exception as e:  # noqa: BLE001 - a bug in one batch must not kill the server
                self.failed += len(batch)
                for job in batch:
                    job.emit(("error", 500, f"generation failed: {type(e).__name__}: {str(e)[:200]}"))
            self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.monotonic() - t0)
            with self.cond:
                self.busy = 0
