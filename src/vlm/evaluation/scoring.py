"""Score every group of a comparison at once, doing each piece of work once, and in parallel when it pays.

``score_groups`` gives, per group, exactly what ``vlm.evaluation.metrics.score_documents`` gives (tests/test_scoring.py
checks it value for value), with three savings:

* **one ground truth, prepared once**: every group is scored against the same ground truths, so each
  document's truth is normalised, flattened and built into a tree once (``metrics.prepare_truth``) and
  shared by the groups whose ground truth for that document is the same (equal as objects and as JSON text,
  so ``1`` and ``1.0`` are never confused);
* **identical answers, scored once**: an answer whose text (and validity) was already scored against the
  same ground truth reuses that result; fine-tunes repeat outputs exactly, and groups agree on documents;
* **parallel documents**: from ``POOL_FROM`` documents on, the documents are split into contiguous ranges,
  one per CPU (up to ``MAX_WORKERS``), scored in forked workers (the parent takes the first range), and
  joined in the original order. Any worker failure falls back to scoring serially. Workers ignore Ctrl-C
  (the parent stops them), die with their parent (Linux), and are daemonic, so none outlives the run.

``run_split`` is that pool for any job with a ``run(start, stop)``; the consistency checks of
``vlm.evaluation.trust`` use it too.

``VLM_WORKERS=N`` sets the number of workers (1: serial); ``VLM_SCORE_PLAIN=1`` turns all three savings off
(``score_documents`` per group, the programme before them), for benchmarks.
"""

from __future__ import annotations

import gc
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vlm.evaluation.metrics import (
    DocScores,
    Truth,
    doc_scores,
    prepare_truth,
    score_document,
    score_documents,
)
from vlm.output import info
from vlm.procs import die_with_parent

POOL_FROM = 500  # below this, starting workers and sending results back costs about what they save (measured:
# 2 workers on 2 cores, 300 x 2 documents 1.48 -> 1.30-1.47 s, 1,000 x 2 2.82 -> 2.05 s)
MAX_WORKERS = 8


@dataclass
class _Job:
    """What every worker reads (inherited by fork, never pickled): per group, answers, truths, validity, keys."""

    preds: list[list[Any]]
    gts: list[list[Any]]
    valid: list[list[bool]]
    keys: list[list[str | None] | None]  # each answer's text (None: not memoised)

    def run(self, start: int, stop: int) -> list[list[dict[str, Any]]]:
        """``score_document`` of documents ``start`` to ``stop`` of every group, in order."""
        out: list[list[dict[str, Any]]] = [[] for _ in self.preds]
        memo: dict[tuple[str, str, bool], dict[str, Any]] = {}
        dumps = json.dumps
        for k in range(start, stop):
            truths: dict[str, tuple[Any, Truth]] = {}  # this document's truths only: trees are not small
            for g, preds in enumerate(self.preds):
                gt, valid = self.gts[g][k], self.valid[g][k]
                text = dumps(gt)
                seen = truths.get(text)
                if seen is None:
                    seen = truths[text] = (gt, prepare_truth(gt))
                if seen[0] is not gt and seen[0] != gt:  # the same text, not the same object (non-str keys)
                    out[g].append(score_document(preds[k], gt, valid))
                    continue
                key = self.keys[g][k] if self.keys[g] is not None else None
                if key is None:
                    out[g].append(score_document(preds[k], gt, valid, seen[1]))
                    continue
                doc = memo.get((key, text, valid))
                if doc is None:
                    doc = memo[key, text, valid] = score_document(preds[k], gt, valid, seen[1])
                out[g].append(doc)
        return out


def workers(n_docs: int) -> int:
    """How many processes score ``n_docs`` documents (1: serial)."""
    if os.environ.get("VLM_WORKERS"):
        return max(1, int(os.environ["VLM_WORKERS"]))
    if n_docs < POOL_FROM:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_WORKERS))


def score_groups(preds: list[list[Any]], gts: list[list[Any]], valid: list[list[bool]],
                 keys: list[list[str | None] | None] | None = None) -> list[DocScores]:
    """Per group, ``score_documents(preds[g], gts[g], valid[g])``; the groups hold the same documents in order.

    ``keys[g]``: each answer's text, where identical text means an identical answer (None: no memo).
    """
    n = len(preds[0])
    if any(len(p) != n or len(t) != n or len(v) != n for p, t, v in zip(preds, gts, valid)):
        raise ValueError("every group must hold the same number of predictions, ground truths and flags")
    if os.environ.get("VLM_SCORE_PLAIN"):
        return [score_documents(p, t, v) for p, t, v in zip(preds, gts, valid)]
    job = _Job(preds, gts, valid, list(keys) if keys else [None] * len(preds))
    parts = run_split(job, n)
    return [doc_scores([d for part in parts for d in part[g]]) for g in range(len(preds))]


def run_split(job: Any, n: int) -> list[Any]:
    """``[job.run(0, n)]``, or from ``POOL_FROM`` items on ``job.run`` of contiguous ranges in forked workers,
    in order. ``job.run(start, stop)`` must depend only on what the workers inherit; any worker trouble
    falls back to running serially, which gives the same values."""
    count = min(workers(n), n)
    if count > 1:
        try:
            return _parallel(job, _ranges(n, count))
        except Exception as e:  # noqa: BLE001 - any worker trouble: the serial programme gives the same values
            if os.environ.get("VLM_DEBUG"):
                info(f"parallel run failed ({type(e).__name__}: {e}); running serially")
    return [job.run(0, n)]


def _ranges(n: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous, near-equal ranges covering 0..n."""
    cuts = [n * k // count for k in range(count + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:])]


class WorkerError(RuntimeError):
    """A worker failed or died; the caller scores serially instead."""


def _parallel(job: Any, ranges: list[tuple[int, int]]) -> list[Any]:
    import multiprocessing

    with heap_frozen():  # the workers' collector leaves the inherited objects alone, so their pages stay shared
        return _run_pool(multiprocessing.get_context("fork"), job, ranges)


_frozen = 0  # nesting depth of heap_frozen()


@contextmanager
def heap_frozen() -> Iterator[None]:
    """``gc.freeze()`` for the duration: the objects alive now are left out of every collection until the
    outermost exit unfreezes them. The groups read for an evaluation are millions of containers with no
    cycles, and each full collection walked them all again: 0.3 s at 10,000 documents x 2 groups (measured),
    for nothing. Objects are still freed by reference counting while frozen."""
    global _frozen
    gc.freeze()
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if not _frozen:
            gc.unfreeze()


def _run_pool(ctx: Any, job: Any, ranges: list[tuple[int, int]]) -> list[Any]:
    procs = []
    try:
        for start, stop in ranges[1:]:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(job, start, stop, send, os.getpid()), daemon=True)
            proc.start()
            send.close()  # the parent keeps only the reading end: a dead worker reads as EOF
            procs.append((proc, recv))
        parts = [job.run(*ranges[0])]
        for proc, recv in procs:
            try:
                status, value = recv.recv()
            except EOFError:
                raise WorkerError(f"worker {proc.pid} died (exit {proc.exitcode})") from None
            if status != "ok":
                raise WorkerError(value)
            parts.append(value)
        return parts
    finally:  # on any exit, Ctrl-C included: stop the workers still running
        for proc, recv in procs:
            recv.close()
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _worker(job: Any, start: int, stop: int, send: Any, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    die_with_parent(signal.SIGKILL, parent)  # no worker outlives the evaluation it scores for
    try:
        send.send(("ok", job.run(start, stop)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which falls back to serial
        send.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        send.close()
