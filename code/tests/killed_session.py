"""`python -m evaluation.inference_pld ARGS`, killed with SIGKILL at a point fixed in advance, not by a timer
(tests/test_startup_cache.py): whether a kill lands mid-measurement or mid-turn must not depend on this machine's
load. The profile's progress is saved after every timed forward here (a run saves it by elapsed time).

    python tests/killed_session.py FORWARDS TURN ARGS...

FORWARDS: die right after a save of the unfinished profile holding at least this many timed forwards;
TURN: "turn" to die right after the first turn is checkpointed, "none" not to.
"""
import os
import runpy
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.run.records import AnswerStore  # noqa: E402
from model.engine import profile  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    forwards_limit, at_turn, args = int(sys.argv[1]), sys.argv[2] == "turn", sys.argv[3:]
    profile.SAVE_SHARE = float("inf")
    save, checkpoint = profile.ProfileCache.save, AnswerStore.checkpoint

    def saving(self, key, entry):
        save(self, key, entry)
        if not entry["complete"] and sum(len(t) for rows in entry["times"].values() for t in rows) >= forwards_limit:
            die()

    def checkpointing(self, question_id, entry):
        checkpoint(self, question_id, entry)
        if at_turn:
            die()

    profile.ProfileCache.save, AnswerStore.checkpoint = saving, checkpointing
    sys.argv = ["evaluation.inference_pld", *args]
    runpy.run_module("evaluation.inference_pld", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
