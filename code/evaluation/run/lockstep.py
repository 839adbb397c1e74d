"""Runs that take turns one engine step at a time: the finest interleaving of methods measured side by side.

Interleaving per question (evaluation.interleaved) leaves each method a few seconds alone on the machine, and on a
shared machine the speed of those seconds drifts: on the 2-core CPU this harness is developed on, the same
8-row forward took 72 ms in one run and 100-125 ms in the next ones. In lockstep each run has its own thread, and
the threads pass a baton after every batch step (round robin), so one step of AR, one of each method, then AR again:
a drift hits all of them alike within a fraction of a second. Only the baton holder computes; a waiting run's engine
clock is stopped (SpeculativeEngine.between_steps / paused), so every time a run records (step, turn and batch
wall times) is its own. Outputs are unchanged: each run keeps its own model inputs, cache, drafters and seeded
generators.
"""
from __future__ import annotations

import threading
import time


class Lockstep:
    def __init__(self):
        self._cond = threading.Condition()
        self._order: list[int] = []   # the runs still going, in turn order
        self._current: int | None = None

    def run(self, jobs: list[tuple[object, object]]) -> list:
        """jobs: (engine, fn) pairs; each fn() runs in its own thread, taking turns with the others after every step
        of its engine. Returns the fns' results in order; an exception in one is raised here once all have ended."""
        results, errors = [None] * len(jobs), []
        self._order, self._current = list(range(len(jobs))), 0

        def work(i: int, fn) -> None:
            try:
                with self._cond:
                    self._cond.wait_for(lambda: self._current == i)
                results[i] = fn()
            except BaseException as exc:   # noqa: BLE001 - handed to the caller's thread
                errors.append(exc)
            finally:
                self._leave(i)

        for i, (engine, _) in enumerate(jobs):
            engine.between_steps = lambda i=i: self._turn(i)
        threads = [threading.Thread(target=work, args=(i, fn), daemon=True) for i, (_, fn) in enumerate(jobs)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for engine, _ in jobs:
                engine.between_steps = None
        if errors:
            raise errors[0]
        return results

    def _next(self, i: int) -> int:
        at = self._order.index(i)
        return self._order[(at + 1) % len(self._order)]

    def _turn(self, i: int) -> float:
        """Run i finished a step: the next run steps; returns the seconds run i waited for its turn again."""
        start = time.perf_counter()
        with self._cond:
            self._current = self._next(i)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._current == i)
        return time.perf_counter() - start

    def _leave(self, i: int) -> None:
        with self._cond:
            following = self._next(i)
            self._order.remove(i)
            if self._current == i:
                self._current = following if self._order else None
            self._cond.notify_all()
