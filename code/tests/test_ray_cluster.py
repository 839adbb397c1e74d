"""Real Ray clusters, as a user meets them: joining one that `ray start --head` started (token authentication on,
as Ray >= 2.59 makes it for local clusters) by the CLI's --ray-address, and the run's own local cluster, which must
be gone once the run returns. Each cluster lives in its own short temporary folder and is stopped through the
process that started it, so no other Ray cluster on the machine is touched (`ray stop` would stop all of them)."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from evaluation import inference_pld
from evaluation.run.cli import evaluate
from test_replicas import make_args

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")  # one of Ray's own dependencies

CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_CLI = os.path.join(os.path.dirname(sys.executable), "ray")
TINY = ["--max-new-tokens", "6", "--dtype", "float32", "--device", "cpu", "--warmup", "0",
        "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", "--num-replicas", "2"]


@pytest.fixture
def sandbox():
    """A short folder (Ray's socket paths must stay under 108 characters) with a home of its own."""
    path = tempfile.mkdtemp(prefix="rc-", dir="/tmp" if os.path.isdir("/tmp") else None)
    os.makedirs(os.path.join(path, "home"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cluster_processes(folder):
    """The processes of the cluster whose session lives in `folder`: those naming it on their command line (GCS,
    raylet, agents) and their descendants (workers rename themselves `ray::IDLE` and name no folder)."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(folder in part for part in proc.info["cmdline"] or []):
                for p in [proc, *proc.children(recursive=True)]:
                    found[p.pid] = p
        except psutil.Error:
            pass
    return list(found.values())


def alive(procs):
    """Those still running (psutil.Process checks its creation time too, so a reused pid is not taken for it)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.Error:
            pass
    return left


def wait_gone(procs, seconds=300):
    """Those still running once every one has exited or `seconds` passed: it returns as soon as they are gone, and
    the bound is one only a process that never exits reaches (a loaded machine's slow shutdown is not a leak)."""
    psutil.wait_procs(alive(procs), timeout=seconds)
    return alive(procs)


def kill(procs):
    """Last resort when a test failed: the leftovers of the cluster this test started, by their process ids."""
    for proc in alive(procs):
        try:
            proc.kill()
        except psutil.Error:
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env(home, **extra):
    """The environment of a user whose home is `home`, with none of our Ray address or authentication settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=home, RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


class HeadNode:
    """`ray start --head --block`: the node lives as long as that process, which stops the node on SIGTERM."""

    def __init__(self, folder, env):
        self.folder, self.port, self.log = folder, free_port(), []
        self.proc = subprocess.Popen(
            [RAY_CLI, "start", "--head", "--block", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
             "--temp-dir", folder, "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()  # drains its output for good, so it never blocks

    def _read(self):
        for line in self.proc.stdout:
            self.log.append(line)
            if "Ray runtime started" in line:
                self.ready.set()
        self.ready.set()

    def wait(self, timeout=600):
        self.ready.wait(timeout)
        assert self.proc.poll() is None and any("Ray runtime started" in line for line in self.log), \
            "ray start --head failed:\n" + "".join(self.log[-30:])

    def stop(self):
        """SIGTERM to `ray start`, which stops its node; returns what of the cluster outlived that (then killed)."""
        procs = cluster_processes(self.folder)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = wait_gone(procs)
        kill(left)
        return left


def run_cli(env, *flags):
    return subprocess.run([sys.executable, "-m", "evaluation.inference_pld", *flags], cwd=CODE, env=env,
                          capture_output=True, text=True, timeout=600)


def questions_file(folder, count=2):
    path = os.path.join(folder, "q.jsonl")
    with open(path, "w") as f:
        for i in range(count):
            f.write(json.dumps({"question_id": i, "category": "math500", "turns": [f"What is {i} + 3?"]}) + "\n")
    return path


def answered(path):
    with open(path) as f:
        return [json.loads(line)["question_id"] for line in f]


def test_joins_a_token_authenticated_cluster_by_address(tiny_model_dir, sandbox):
    home = os.path.join(sandbox, "home")
    os.makedirs(os.path.join(home, ".ray"))
    with open(os.path.join(home, ".ray", "auth_token"), "w") as f:
        f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate`, or any earlier ray.init(), leaves
    head = HeadNode(os.path.join(sandbox, "r"), user_env(home))
    procs = []
    try:
        head.wait()
        assert any("Token authentication is enabled" in line for line in head.log)
        address = f"127.0.0.1:{head.port}"
        common = ["--model-path", tiny_model_dir, "--question-file", questions_file(sandbox), *TINY,
                  "--ray-address", address]

        # Authentication turned off on the driver's side: refused, in one line naming what to set (one connection
        # attempt instead of Ray's twenty one-second retries).
        refused = run_cli(user_env(home, RAY_AUTH_MODE="disabled", RAY_gcs_server_port_wait_time_s="1"),
                          *common, "--answer-file", os.path.join(sandbox, "refused.jsonl"))
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert refused.stderr.strip().splitlines()[-1] == (
            f"error: cannot join the Ray cluster at {address}: Ray's token authentication asks for a token and this "
            "process sent none: set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or in a file "
            "named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token); `ray get-auth-token` on the head node prints it")
        assert "Traceback" not in refused.stderr

        # The plain command: the token in ~/.ray/auth_token goes to this machine's cluster.
        answer = os.path.join(sandbox, "joined.jsonl")
        joined = run_cli(user_env(home), *common, "--answer-file", answer)
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert answered(answer) == [0, 1]
        with open(os.path.join(sandbox, "joined.config.json")) as f:
            assert json.load(f)["replicas"] == 2
        # A cluster the run joined is not the run's to stop.
        procs = cluster_processes(head.folder)
        assert head.proc.poll() is None and "gcs_server" in {p.name() for p in alive(procs)}
    finally:
        left = head.stop()
    assert left == [] and alive(procs) == []


def test_the_run_starts_and_stops_its_own_cluster(tiny_model_dir, sandbox, monkeypatch):
    """In this process, since a child's exit would stop its Ray anyway: the harness's own shutdown is checked."""
    monkeypatch.setenv("RAY_TMPDIR", sandbox)  # Ray keeps its sessions in <RAY_TMPDIR>/ray
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray turns it on for a new local cluster; undone afterwards
    folder = os.path.join(sandbox, "ray")
    if ray.is_initialized():
        ray.shutdown()
    procs, names = {}, set()
    original_shutdown = ray.shutdown

    def shutdown(*args, **kwargs):  # the cluster's processes, workers included, as the run ends
        for proc in cluster_processes(folder):
            try:
                names.add(proc.name())
                procs[proc.pid] = proc
            except psutil.Error:
                pass
        return original_shutdown(*args, **kwargs)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    answer = os.path.join(sandbox, "own.jsonl")
    args = make_args(tiny_model_dir, questions_file(sandbox), answer, "--num-replicas", "2", "--max-new-tokens", "6",
                     "--warmup", "0")
    try:
        evaluate(args, inference_pld.make_drafter)
        assert answered(answer) == [0, 1]
        assert not ray.is_initialized()
        assert {"gcs_server", "raylet"} <= names, names
        left = wait_gone(list(procs.values()))
        assert [" ".join(p.cmdline())[:100] for p in left] == []
    finally:
        if ray.is_initialized():
            original_shutdown()
        kill(list(procs.values()) + cluster_processes(folder))
