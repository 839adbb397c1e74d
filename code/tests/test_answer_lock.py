"""One writer per answer file: a second run is refused while the first lives; a dead run's lock never blocks."""
import os
import subprocess
import sys
import time

import pytest

from evaluation.run.records import AnswerStore
from model.errors import UserError

CONFIG = {"method": "ar"}


def test_a_second_store_on_the_same_file_is_refused_until_the_first_closes(tmp_path):
    answer = str(tmp_path / "a.jsonl")
    first = AnswerStore(answer, CONFIG)
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        AnswerStore(answer, CONFIG)
    first.close()
    AnswerStore(answer, CONFIG).close()


def test_a_killed_writer_leaves_a_lock_file_that_does_not_block(tmp_path):
    answer = str(tmp_path / "a.jsonl")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.'); from evaluation.run.records import AnswerStore; "
        f"s = AnswerStore({answer!r}, {{'method': 'ar'}}); print('locked', flush=True); time.sleep(60)")],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"being written by another run \\(pid {holder.pid}\\)"):
            AnswerStore(answer, CONFIG)
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(str(tmp_path / "a.lock"))   # the file stays; the lock died with its process
    deadline = time.time() + 5
    store = AnswerStore(answer, CONFIG)
    assert time.time() < deadline
    store.close()
