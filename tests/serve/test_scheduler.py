"""The server's queue and batching without a model: what is refused, what expires, what shares a batch, and how
a job's tokens become text (stop strings, incomplete characters, limits)."""
from __future__ import annotations

import threading
import time

import pytest

from lorakit.serve.scheduler import Job, Output, QueueFull, Scheduler


def job(key=("a", 0.0), *, max_tokens=10, stop=(), deadline_s=30.0, events=None):
    events = events if events is not None else []
    return Job(system=key[0], key=key, max_tokens=max_tokens, temperature=key[1], stop=list(stop),
               deadline=time.monotonic() + deadline_s, emit=events.append, messages=[])


def test_output_cuts_at_stop_strings_and_holds_back_what_could_become_one():
    events = []
    vocab = {1: "记", 2: "6", 3: "分", 4: "。", 5: "<END>", 9: "\n"}
    out = Output(job(stop=["分。"], events=events), lambda ids: "".join(vocab[i] for i in ids), {5}, prompt_tokens=7)
    for t in (1, 2, 3):
        out.add(t)
    assert "".join(e[1] for e in events) == "记6"  # "分" may begin "分。": held back
    out.add(4)
    assert out.done and out.finish == "stop" and out.text == "记6"
    res = out.close()
    assert res == {"text": "记6", "finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 4,
                   "timed_out": False}
    assert "".join(e[1] for e in events if e[0] == "text") == "记6" and events[-1][0] == "done"


def test_output_limits_stop_token_and_incomplete_characters():
    events = []
    pieces = {1: b"\xe8\xae", 2: b"\xb0", 3: b"!"}  # 记 split over two tokens
    out = Output(job(max_tokens=3, events=events), lambda ids: b"".join(pieces[i] for i in ids).decode(
        "utf-8", "replace"), {0}, prompt_tokens=1)
    out.add(1)
    assert not [e for e in events if e[0] == "text"]  # half a character is never sent
    out.add(2)
    assert events[-1] == ("text", "记")
    out.add(3)
    assert out.finish == "length" and out.close()["completion_tokens"] == 3
    stopped = Output(job(events=[]), lambda ids: "x" * len(ids), {0}, prompt_tokens=1)
    stopped.add(7)
    stopped.add(0)
    assert stopped.finish == "stop" and stopped.text == "x" and stopped.close()["completion_tokens"] == 2
    late = Output(job(deadline_s=-1, events=[]), lambda ids: "y", {0}, prompt_tokens=1)
    late.add(7)
    assert late.finish == "length" and late.close()["timed_out"] is True


def test_scheduler_refuses_when_full_expires_waiting_jobs_and_batches_by_key():
    release = threading.Event()
    batches = []

    def run_batch(jobs):
        batches.append([j.key for j in jobs])
        release.wait(10)
        for j in jobs:
            j.emit(("done", {}))

    sched = Scheduler(run_batch, max_queue=3, max_batch=2)
    try:
        first = job(("a", 0.0))
        sched.submit(first)
        deadline = time.monotonic() + 5
        while not batches and time.monotonic() < deadline:
            time.sleep(0.01)
        expired_events = []
        waiting = [job(("a", 0.0)), job(("b", 0.0)), job(("a", 0.0), deadline_s=0.05, events=expired_events)]
        for j in waiting:
            sched.submit(j)
        with pytest.raises(QueueFull) as e:
            sched.submit(job())
        assert e.value.retry_after >= 1 and sched.stats()["waiting"] == 3
        time.sleep(0.1)  # the third waiting job's deadline passes while the first batch runs
        release.set()
        deadline = time.monotonic() + 5
        while len(batches) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batches == [[("a", 0.0)], [("a", 0.0)], [("b", 0.0)]]
        assert expired_events and expired_events[0][:2] == ("error", 504)
    finally:
        release.set()
        sched.stop()


def test_a_failing_batch_answers_500_and_the_worker_lives_on():
    calls = []

    def run_batch(jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("boom")
        for j in jobs:
            j.emit(("done", {}))

    sched = Scheduler(run_batch, max_queue=4, max_batch=4)
    try:
        bad, good = [], []
        sched.submit(job(events=bad))
        deadline = time.monotonic() + 5
        while not bad and time.monotonic() < deadline:
            time.sleep(0.01)
        sched.submit(job(events=good))
        while not good and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bad[0][:2] == ("error", 500) and "boom" in bad[0][2] and good == [("done", {})]
        assert sched.stats()["failed"] == 1 and sched.stats()["served"] == 1
    finally:
        sched.stop()
