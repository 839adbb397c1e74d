"""Several model replicas on one question file, with Ray (as the seed and Spec-Bench scale out), merged into one
answer file.

Replicas: `--num-gpus-total N --num-gpus-per-model M` gives N/M replicas, each a Ray task holding M GPUs;
`--num-replicas K --device cpu` gives K CPU replicas, each a Ray task with its own torch thread pool of
max(1, cluster CPUs // K) threads. Without `--ray-address` a local Ray cluster of the run's own is started (and
stopped at the end); with it (or with Ray's RAY_ADDRESS) the run joins that cluster, whose nodes must see the repository and the answer folder at
the same paths (a shared file system: the replicas write their shards there and this process merges them), and
leaves it running. A cluster with token authentication (Ray's default for local clusters since 2.59) is joined with
its token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (see send_token); a refusal is one line
naming what to set.

Split: round-robin over the selected questions (the i-th question of --question-begin/--question-end goes to
replica i mod K), so replicas get alike mixes of categories and lengths, and the split does not depend on what is
already done (a resumed replica keeps its questions). Questions already in the merged answer file, or in another
shard, are not given to anyone.

Files: replica k of K answers into `<stem>.shard-<k>-of-<K>.jsonl` with its own `.steps.jsonl`, `.config.json` and
lock, through the same AnswerStore as a one-process run (atomic lines, per-step log, resume, configuration identity),
and does its own warm-up. Once every replica has finished, their answers are appended to `<stem>.jsonl` (and their
steps to `<stem>.steps.jsonl`) in question order, the answers the file already held first, each question once;
`<stem>.config.json` is a replica's configuration plus `replicas` (the count), `replica_devices` (each replica's
device, device name, host) and one `sessions` entry per replica session; the merged shards are then deleted.
Re-running the command resumes unfinished shards; a replica that dies makes the command fail with one line, its
completed questions kept. Outputs are token-identical to one process's under greedy decoding (and sampling with
point-mass drafts: seeds depend on the question, not on the order); drafters with global state scope learn from their
replica's questions only. Wall times are measured on hardware the replicas may share.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import re
import socket
import sys
import time

from evaluation.data.questions import load_questions
from evaluation.run.records import ABSENT, IDENTITY, AnswerStore, atomic_write_text, stem
from model.errors import UserError

RAY_PIN = "ray==2.60.0"
ASSIGNMENT = "round-robin: the i-th selected question goes to replica i mod K"
SHARD = re.compile(r"\.shard-(\d+)-of-(\d+)\.jsonl$")


def replica_count(args) -> int:
    """How many replicas the flags ask for (finalize lets at most one of the two ways ask for more than one)."""
    return max(getattr(args, "num_replicas", 1) or 1,
               getattr(args, "num_gpus_total", 1) // getattr(args, "num_gpus_per_model", 1))


def shard_file(answer_file: str, index: int, count: int) -> str:
    return f"{stem(answer_file)}.shard-{index}-of-{count}.jsonl"


def shard_files(path: str) -> list[str]:
    """The answer, step, configuration and lock files of one shard."""
    base = stem(path)
    return [path, base + ".steps.jsonl", base + ".config.json", base + ".lock", base + ".partial.jsonl"]


def assign(questions: list[dict], count: int) -> list[list]:
    """Question ids of each replica, round-robin over the selection."""
    return [[q["question_id"] for q in questions[k::count]] for k in range(count)]


# ---------------------------------------------------------------------------------------------- reading files

def read_lines(path: str) -> list[dict]:
    """The complete lines of a JSONL file this harness wrote, read only (a torn last line is left to the writer's
    resume, which cuts it)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for lineno, line in enumerate(data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["question_id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{lineno}: not a line this harness wrote") from None
        out.append(record)
    return out


def read_config(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def answered(path: str) -> set:
    return {a["question_id"] for a in read_lines(path)}


# ---------------------------------------------------------------------------------------------- inside a replica

def note_replica(args, store: AnswerStore, device) -> None:
    """Once its shard is open: refuse to go on if its configuration differs from the merged
    answer file's or from another shard's (one answer file, one configuration, one kind of hardware), then record
    where this replica runs in the shard's configuration."""
    info = args.replica
    config = read_config(store.config_file)
    others = {stem(info["answer_file"]) + ".config.json": read_config(stem(info["answer_file"]) + ".config.json")}
    for k in range(info["count"]):
        if k != info["index"]:
            path = stem(shard_file(info["answer_file"], k, info["count"])) + ".config.json"
            others[path] = read_config(path)
    for path, other in others.items():
        if other is None:
            continue
        for key in IDENTITY:
            if other.get(key, ABSENT.get(key)) != config.get(key, ABSENT.get(key)):
                raise UserError(f"replica {info['index']} of {info['count']} differs from {path} in {key} "
                                f"({config.get(key)!r} here, {other.get(key, ABSENT.get(key))!r} there): the "
                                f"replicas of one answer file must share its configuration and hardware")
    import torch
    config.setdefault("replica_sessions", []).append({
        "replica": info["index"], "replicas": info["count"], "device": str(device),
        "device_name": config.get("device_name"), "hostname": socket.gethostname(), "pid": os.getpid(),
        "threads": torch.get_num_threads(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "questions": len(args.replica_questions), "started": time.time()})
    atomic_write_text(store.config_file, json.dumps(config, indent=2) + "\n")


def _replica(context: dict, blob: bytes) -> dict:
    """The body of one replica's Ray task: the one-process loop on its shard and its questions."""
    os.chdir(context["cwd"])
    sys.path.extend(p for p in context["sys_path"] if p not in sys.path)  # where make_drafter's module lives
    sys.argv = list(context["argv"])  # recorded as the command in the shard's configuration
    import torch
    torch.set_num_threads(context["threads"])
    from ray import cloudpickle
    args, make_drafter = cloudpickle.loads(blob)
    from evaluation.run.loop import run_eval
    try:
        run_eval(args, make_drafter, set(args.replica_questions),
                 on_open=lambda store, device: note_replica(args, store, device))
    except UserError as exc:
        return {"replica": args.replica["index"], "error": str(exc)}
    return {"replica": args.replica["index"], "hostname": socket.gethostname()}


# ---------------------------------------------------------------------------------------------- the driver

def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"several replicas run on Ray, which is not installed: pip install '{RAY_PIN}'") from None
    return ray


TOKEN_HELP = ("set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or in a file named by "
              "RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token); `ray get-auth-token` on the head node prints it")


def default_token_file() -> str:
    return os.path.join(os.path.expanduser("~"), ".ray", "auth_token")  # where Ray itself looks last


def token_source() -> str | None:
    """Where Ray will read its authentication token from, in Ray's own order of precedence; None without one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return default_token_file() if os.path.isfile(default_token_file()) else None


def this_machine(address: str) -> bool:
    """Whether a cluster address names this machine (loopback, its host name or one of its addresses)."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("auto", "localhost", "::1"):
        return True
    try:
        ip = socket.gethostbyname(host)
        own = {socket.gethostbyname(socket.gethostname())}
    except OSError:
        return False
    return ip.startswith("127.") or ip in own


def send_token(address: str) -> bool:
    """Whether joining `address` should turn token authentication on, as Ray documents it (on by default for
    local clusters since Ray 2.59). RAY_AUTH_MODE, when set, decides alone. Unset, Ray 2.60 never sends a token to
    an explicit address, so `--ray-address 127.0.0.1:6379` of a `ray start --head` cluster is refused; here the token
    is sent when the user named one (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH), or when the cluster is on this machine and
    ~/.ray/auth_token exists (what Ray does itself for address "auto"): never to another machine's cluster unasked."""
    if os.environ.get("RAY_AUTH_MODE"):
        return False
    source = token_source()
    return source is not None and (source != default_token_file() or this_machine(address))


def use_token_auth() -> None:
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray read its configuration when it was imported: read it again (as ray.init does for a new cluster)
        from ray._raylet import Config
        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def check_token_path() -> None:
    """An unreadable or empty RAY_AUTH_TOKEN_PATH in one line (Ray says it in a paragraph, as a refusal)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and not os.environ.get("RAY_AUTH_TOKEN"):
        try:
            with open(path, encoding="utf-8") as f:
                empty = not f.read().strip()
        except OSError as exc:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the Ray token: {exc.strerror or exc}") from None
        if empty:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is empty: it must hold the Ray cluster's token")


def auth_failure(exc: BaseException) -> bool:
    """Whether ray.init failed on token authentication (Ray wraps that error's text into ConnectionError's cause)."""
    while exc is not None:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc) \
                or "no authentication token was found" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def start_ray(ray, address: str | None, gpus: int = 0) -> bool:
    """Join the cluster at `address`, or start a local one; False when this process was already connected."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    check_token_path()
    if address and send_token(address):
        use_token_auth()
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        else:
            # "local": a new cluster of this run's own, whatever Ray would otherwise find
            ray.init(address="local", num_cpus=os.cpu_count() or 1, num_gpus=gpus, include_dashboard=False,
                     object_store_memory=128 << 20)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        if auth_failure(exc):
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                what = "asks for a token and this process sent none"
            elif token_source() is None:
                what = "is on (RAY_AUTH_MODE=token) but no token was found"
            else:
                what = f"refused this process's token (from {token_source()})"
            raise UserError(f"cannot join {where}: Ray's token authentication {what}: {TOKEN_HELP}") from None
        raise UserError(f"cannot start or join {where}: {first_line(exc)}") from None
    return True


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_stale_shards(answer_file: str, count: int, merged: set) -> None:
    """Shards of a run with another replica count that still hold unmerged answers: finish that run first."""
    for path in sorted(glob.glob(glob.escape(stem(answer_file)) + ".shard-*-of-*.jsonl")):
        match = SHARD.search(path)
        if match and int(match.group(2)) != count and answered(path) - merged:
            raise UserError(f"{path} holds answers of an unfinished {match.group(2)}-replica run: re-run with "
                            f"{match.group(2)} replicas to finish and merge it, or move it away")


def plan(args, questions: list[dict], count: int) -> dict[int, list]:
    """Replica index -> the question ids it still has to answer (replicas with none are not started)."""
    merged = answered(args.answer_file)
    check_stale_shards(args.answer_file, count, merged)
    done = [answered(shard_file(args.answer_file, k, count)) for k in range(count)]
    work = {}
    for k, ids in enumerate(assign(questions, count)):
        elsewhere = merged.union(*(done[j] for j in range(count) if j != k))
        mine = [qid for qid in ids if qid not in elsewhere]
        if any(qid not in done[k] for qid in mine):
            work[k] = mine
    return work


def replica_args(args, index: int, count: int, questions: list) -> object:
    shard = copy.copy(args)
    shard.answer_file = shard_file(args.answer_file, index, count)
    shard.num_replicas, shard.num_gpus_total, shard.ray_address = 1, args.num_gpus_per_model, None
    shard.replica = {"index": index, "count": count, "answer_file": args.answer_file}
    shard.replica_questions = list(questions)
    return shard


def launch(ray, args, make_drafter, work: dict[int, list], count: int) -> None:
    """One Ray task per replica with work; waits for all of them, then fails with one line if any failed."""
    gpu = args.num_gpus_total // args.num_gpus_per_model > 1
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    node_cpus = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [cpus])
    per_replica = min(max(1, cpus // count), max(1, node_cpus))
    options = {"max_retries": 0}  # a dead replica is resumed by re-running the command, never silently
    if gpu:
        have = int(resources.get("GPU", 0))
        if have < args.num_gpus_per_model:
            raise UserError(f"the Ray cluster has {have} GPU(s); each replica needs --num-gpus-per-model "
                            f"{args.num_gpus_per_model}")
        if have < args.num_gpus_total:
            print(f"warning: the Ray cluster has {have} GPUs for --num-gpus-total {args.num_gpus_total}: replicas "
                  "will wait for one another", file=sys.stderr)
        options.update(num_gpus=args.num_gpus_per_model, num_cpus=cpus // count)
    else:
        if cpus < count:
            print(f"warning: the Ray cluster has {cpus} CPUs for {count} replicas: replicas will wait for one "
                  "another", file=sys.stderr)
        options.update(num_cpus=per_replica)
    from ray import cloudpickle
    context = {"cwd": os.getcwd(), "sys_path": list(sys.path), "argv": list(sys.argv), "threads": per_replica}
    task = ray.remote(_replica).options(**options)
    pending = {}
    for k, ids in sorted(work.items()):
        blob = cloudpickle.dumps((replica_args(args, k, count, ids), make_drafter))
        pending[task.remote(context, blob)] = k
    print(f"{len(pending)} replica(s) of {count} started ({'GPU' if gpu else 'CPU'}, {per_replica} CPU thread(s) "
          f"each); questions split {ASSIGNMENT}", file=sys.stderr)
    failures = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            text = str(exc).strip()
            print(text, file=sys.stderr)
            result = {"error": text.splitlines()[-1] if text else type(exc).__name__}
        if "error" in result:
            failures.append(f"replica {k}: {result['error']}")
        else:
            print(f"replica {k} of {count} finished", file=sys.stderr)
    if failures:
        raise UserError(f"{'; '.join(failures)} (answers completed so far are kept in "
                        f"{stem(args.answer_file)}.shard-*-of-{count}.jsonl: run the same command again to resume)")


def merged_config(args, count: int, shard_configs: dict[int, dict]) -> dict:
    base = dict(shard_configs[min(shard_configs)])
    for key in ("sessions", "cost_profile", "replica_sessions"):
        base.pop(key, None)
    base["command"] = " ".join(sys.argv)
    base["replicas"] = count
    base["replica_assignment"] = ASSIGNMENT
    return base


def replica_devices(shard_configs: dict[int, dict], counts: dict[int, int]) -> list[dict]:
    devices = []
    for k, config in sorted(shard_configs.items()):
        last = (config.get("replica_sessions") or [{}])[-1]
        devices.append({"replica": k, "device": last.get("device", config.get("device")),
                        "device_name": config.get("device_name"), "hostname": last.get("hostname"),
                        "threads": last.get("threads"), "cuda_visible_devices": last.get("cuda_visible_devices"),
                        "answers_merged": counts.get(k, 0)})
    return devices


def merge(args, questions: list[dict], count: int) -> int:
    """Append the shards' answers (and steps) to the answer file in question order, each question once; record the
    replicas in its configuration; delete the shards whose every answer is now in it. Returns how many were added."""
    paths = {k: shard_file(args.answer_file, k, count) for k in range(count)}
    answers = {}
    for k, path in paths.items():
        for answer in read_lines(path):
            answers.setdefault(answer["question_id"], (k, answer))
    if not answers:
        return 0
    configs = {k: read_config(stem(p) + ".config.json") for k, p in paths.items()}
    configs = {k: c for k, c in configs.items() if c is not None}
    if not configs:
        raise UserError(f"{paths[0]}: answers without their .config.json; refusing to merge them")
    store = AnswerStore(args.answer_file, merged_config(args, count, configs))
    steps_of = {}
    added = {}
    try:
        for question in questions:
            qid = question["question_id"]
            if qid in store.done or qid not in answers:
                continue
            k, answer = answers[qid]
            if k not in steps_of:
                steps_of[k] = {}
                for step in read_lines(stem(paths[k]) + ".steps.jsonl"):
                    steps_of[k].setdefault(step["question_id"], []).append(step)
            store.write(answer, steps_of[k].get(qid, []))
            added[k] = added.get(k, 0) + 1
        config = read_config(store.config_file)
        sessions = config.setdefault("sessions", [])
        for k, shard_config in sorted(configs.items()):
            for session in shard_config.get("sessions", []):
                entry = {**session, "replica": k, "replicas": count}
                if entry not in sessions:
                    sessions.append(entry)
                    if "cost_profile" in entry:
                        config.setdefault("cost_profile", entry["cost_profile"])
        if added:
            config.setdefault("replicas", count)
            config.setdefault("replica_devices", replica_devices(configs, added))
            config.setdefault("replica_runs", []).append(
                {"replicas": count, "merged": time.time(), "answers": sum(added.values()),
                 "devices": replica_devices(configs, added)})
        atomic_write_text(store.config_file, json.dumps(config, indent=2) + "\n")
        done = set(store.done)
    finally:
        store.close()
    for k, path in paths.items():
        ids = answered(path)
        if os.path.exists(path) and ids <= done:
            for name in shard_files(path):
                if os.path.exists(name):
                    os.remove(name)
        elif ids - done:
            print(f"note: {path} keeps {len(ids - done)} answer(s) of questions outside this selection",
                  file=sys.stderr)
    return sum(added.values())


def run_replicated(args, make_drafter) -> None:
    """The replicated run: plan, start the replicas that have work, merge once all have finished."""
    ray = import_ray()
    count = replica_count(args)
    questions = load_questions(args.question_file, args.question_begin, args.question_end)
    work = plan(args, questions, count)
    if work:
        # RAY_ADDRESS is Ray's own way to name a cluster (a `ray job submit` driver gets "auto"): joined as the flag is
        address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
        gpus = 0
        if args.num_gpus_total // args.num_gpus_per_model > 1 and not address:
            import torch
            gpus = torch.cuda.device_count()
        started = start_ray(ray, address, gpus)
        try:
            launch(ray, args, make_drafter, work, count)
        finally:
            if started:
                ray.shutdown()
    added = merge(args, questions, count)
    missing = [q["question_id"] for q in questions if q["question_id"] not in answered(args.answer_file)]
    if missing:
        raise UserError(f"{len(missing)} question(s) still unanswered after the replicas finished (first: "
                        f"{missing[0]!r}); run the same command again")
    if not work and not added:
        print(f"all {len(questions)} questions already answered in {args.answer_file}")
        return
    print(f"answers: {args.answer_file} ({added} merged from {count} replicas)")
