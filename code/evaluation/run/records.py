"""Answer files, per-step logs and the run configuration, written so that no completed work is ever lost.

- `<stem>.jsonl`: one line per completed question, appended with a single write + fsync.
- `<stem>.steps.jsonl`: the per-step log; a question's steps are written just before its answer line.
- `<stem>.config.json`: the run configuration, written once. Resuming under another configuration is refused.
- `<stem>.lock`: held (flock) by the one run writing these files; a second run is refused while it lives. The kernel
  releases it when the process dies, however it dies, so a stale lock file never blocks.
- `<stem>.partial.jsonl`: checkpoints of the question in progress, one line per completed turn (a round of
  multi-round thinking or a sample of Best-of-N, of each choice), appended with a single write + fsync like the
  answer lines: `question_id, choice, turn, record` (that turn's values of every per-turn answer field, the output
  text included), `tokens` (its token ids: a drafter that keeps state across turns is rebuilt from them) and `steps`
  (its per-step log lines). A resumed run takes a question's checkpointed turns and continues from the next one, so a
  kill loses at most the turn in progress. When the question's answer line is written its checkpoint lines are
  dropped at once (the file is rewritten atomically without them, and removed when nothing is left); lines of a
  question already answered (a kill between the answer line and that rewrite) are dropped at the next resume.
A run killed mid-write leaves at most a torn last line, which the next run drops (that question, or that turn, is
redone), together with the step lines of questions that have no answer line.
"""
from __future__ import annotations

import fcntl
import json
import os

from model.errors import UserError

# Fields that must match to append to an existing answer file (the rest, e.g. versions, is informative).
IDENTITY = ("method", "method_parameters", "draft_state_scope", "model_id", "dtype", "device_type", "device_name",
            "num_gpus_per_model", "question_file", "temperature", "top_p", "top_k", "max_new_tokens", "paradigm",
            "turns_per_question", "seed", "num_choices", "max_tree_nodes", "cost_aware",
            "thinking_budget", "batch_size", "cross_sample", "continuous_batching", "engine_mode")
# What a key absent from a configuration written before it existed meant.
ABSENT = {"cost_aware": False, "batch_size": 1, "cross_sample": True, "continuous_batching": False,
          "engine_mode": "eager"}


def stem(answer_file: str) -> str:
    return answer_file[: -len(".jsonl")] if answer_file.endswith(".jsonl") else answer_file


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _complete_lines(path: str) -> list[str]:
    """Lines of a JSONL file, after cutting a torn last line (one without its newline) off the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    return [ln for ln in data[:cut].decode("utf-8").splitlines() if ln.strip()]


class AnswerStore:
    def __init__(self, answer_file: str, config: dict):
        self.answer_file = answer_file
        self.steps_file = stem(answer_file) + ".steps.jsonl"
        self.config_file = stem(answer_file) + ".config.json"
        self.lock_file = stem(answer_file) + ".lock"
        self.partial_file = stem(answer_file) + ".partial.jsonl"
        self._lock = None
        self._checkpoints: dict = {}   # question id -> [(line, parsed)] in file order
        if os.path.isdir(answer_file):
            raise UserError(f"--answer-file {answer_file} is a directory")
        try:
            os.makedirs(os.path.dirname(answer_file) or ".", exist_ok=True)
            self._acquire()
            self.done = self._resume(config)
        except OSError as exc:
            self.close()
            raise UserError(f"cannot use answer file {answer_file}: {exc.strerror or exc}") from None
        except UserError:
            self.close()
            raise

    def _acquire(self) -> None:
        lock = open(self.lock_file, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"{self.answer_file} is being written by another run ({owner}); wait for it or stop it, "
                            "or choose another --answer-file") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def close(self) -> None:
        """Release the lock (also released when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _resume(self, config: dict) -> set:
        lines = _complete_lines(self.answer_file)
        if lines or os.path.exists(self.config_file) or os.path.exists(self.partial_file):
            self._check_same_run(config)
        else:
            atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")
        done = set()
        for lineno, line in enumerate(lines, start=1):
            try:
                done.add(json.loads(line)["question_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{self.answer_file}:{lineno}: not an answer line; "
                                "refusing to append to a file this harness did not write") from None
        self._drop_orphan_steps(done)
        self._load_checkpoints(done)
        return done

    def _check_same_run(self, config: dict) -> None:
        try:
            with open(self.config_file, encoding="utf-8") as f:
                old = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{self.answer_file} exists without {os.path.basename(self.config_file)}; "
                            "refusing to append to it: choose another --answer-file or --model-id") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {self.config_file}: {exc}") from None
        for key in IDENTITY:
            if old.get(key, ABSENT.get(key)) != config.get(key, ABSENT.get(key)):
                raise UserError(f"{self.answer_file} was written by another configuration ({key}: "
                                f"{old.get(key)!r} there, {config.get(key)!r} now); choose another --answer-file "
                                "or --model-id")

    def _drop_orphan_steps(self, done: set) -> None:
        lines = _complete_lines(self.steps_file)
        kept = []
        for lineno, line in enumerate(lines, start=1):
            try:
                question_id = json.loads(line)["question_id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{self.steps_file}:{lineno}: not a step line; "
                                "refusing to rewrite a file this harness did not write") from None
            if question_id in done:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(self.steps_file, "".join(ln + "\n" for ln in kept))

    def _load_checkpoints(self, done: set) -> None:
        """Read the checkpoint lines (a torn last line is cut off), dropping those of questions already answered."""
        lines = _complete_lines(self.partial_file)
        stale = False
        for lineno, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                question_id = entry["question_id"]
                if not all(isinstance(entry[k], t) for k, t in (("choice", int), ("turn", int), ("record", dict),
                                                                 ("tokens", list), ("steps", list))):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{self.partial_file}:{lineno}: not a checkpoint line; "
                                "refusing to rewrite a file this harness did not write") from None
            if question_id in done:
                stale = True
            else:
                self._checkpoints.setdefault(question_id, []).append((line, entry))
        if stale:
            self._rewrite_checkpoints()

    def _rewrite_checkpoints(self) -> None:
        kept = [line for entries in self._checkpoints.values() for line, _ in entries]
        if kept:
            atomic_write_text(self.partial_file, "".join(ln + "\n" for ln in kept))
        elif os.path.exists(self.partial_file):
            os.remove(self.partial_file)

    def checkpoint(self, question_id, entry: dict) -> None:
        """Save one completed turn of a question in progress: `entry` holds `choice`, `turn`, `record` (the turn's
        per-turn answer fields), `tokens` and `steps`. One write + fsync, as for answer lines."""
        full = {"question_id": question_id, **entry}
        line = json.dumps(full, ensure_ascii=False)
        _append(self.partial_file, line + "\n")
        self._checkpoints.setdefault(question_id, []).append((line, full))

    def completed_turns(self, question_id, turns_per_choice: int) -> list[dict]:
        """The checkpointed turns of a question a resumed run may take as done: of each choice, the longest run of
        consecutive turns from the first, in the order written (a batched run interleaves the choices' turns; a line
        out of that order, which an interrupted run never writes, is ignored; of two lines for one turn the first
        counts)."""
        taken, next_turn = [], {}
        for _, entry in self._checkpoints.get(question_id, []):
            choice, turn = entry["choice"], entry["turn"]
            if turn == next_turn.get(choice, 0) < turns_per_choice:
                taken.append(entry)
                next_turn[choice] = turn + 1
        return taken

    def add_session(self, info: dict) -> None:
        """Record what one run session measured (the forward-cost profile) in the configuration: `sessions` keeps
        one entry per session, and `cost_profile` the first session's profile."""
        with open(self.config_file, encoding="utf-8") as f:
            config = json.load(f)
        config.setdefault("sessions", []).append(info)
        if "cost_profile" in info:
            config.setdefault("cost_profile", info["cost_profile"])
        atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")

    def update_session(self, info: dict) -> None:
        """Add what the session learned by its end (the engine's allocations and captures) to its entry."""
        with open(self.config_file, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("sessions"):
            config["sessions"][-1].update(info)
            atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")

    def recorded_profile(self) -> dict | None:
        """The forward-cost profile an earlier session of this run measured (same model, dtype, device type and
        method, by the configuration check), if any."""
        try:
            with open(self.config_file, encoding="utf-8") as f:
                return json.load(f).get("cost_profile")
        except (OSError, json.JSONDecodeError):
            return None

    def write(self, answer: dict, steps: list[dict]) -> None:
        if steps:
            _append(self.steps_file, "".join(json.dumps(s) + "\n" for s in steps))
        _append(self.answer_file, json.dumps(answer, ensure_ascii=False) + "\n")
        self.done.add(answer["question_id"])
        if self._checkpoints.pop(answer["question_id"], None) is not None:
            self._rewrite_checkpoints()


def _append(path: str, text: str) -> None:
    # One write call on an O_APPEND descriptor: a kill leaves at most a torn tail, repaired on resume.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
