"""The target's forward cost: measured as t(n)/t(1) for the model, dtype, device and engine mode at hand, and kept.

A verification forward of n tokens (root + draft nodes) costs t(n); t is not monotonic in n (matrix kernels change
with the shape; on GPUs it is a step function of tile sizes, and in static mode a step function of the width
buckets). `ForwardCostProfile` measures it; `ProfileCache` keeps it on disk, saved as it is measured, so later runs
on the same model, dtype, device, engine mode and libraries reuse it and a run killed while measuring continues
where it was. The cost-aware chooser that reads it is `cost.py`.
"""
from __future__ import annotations

import bisect
import glob
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

# Widths measured: every width up to 16 (where the kernels' shape changes are densest), then a coarser grid.
DENSE_WIDTHS = 16
COARSE_WIDTHS = (20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)

def profile_widths(max_width: int) -> list[int]:
    widths = [w for w in range(1, DENSE_WIDTHS + 1) if w <= max_width]
    widths += [w for w in COARSE_WIDTHS if DENSE_WIDTHS < w <= max_width]
    if widths[-1] < max_width:
        widths.append(max_width)
    return widths


@dataclass
class ForwardCostProfile:
    """Median seconds of one forward of `widths[j]` new tokens on a cache of `context_lengths[i]` tokens."""
    widths: list[int]
    context_lengths: list[int]
    seconds: list[list[float]]             # [context][width]
    repeats: int = 0
    batch_size: int = 1                    # rows per forward (each of `width` tokens): t(B, n)
    origin: dict | None = None             # where it came from: measured now, or taken from the profile cache
    _ratios: list[list[float]] = field(init=False, repr=False)

    def __post_init__(self):
        self._ratios = [[t / row[0] for t in row] for row in self.seconds]

    def ratio(self, width: int, context_length: int) -> float:
        """t(width)/t(1) at this context length (linear between measured lengths). An unmeasured width costs what
        the next measured one costs (cost steps up between grid points); beyond the grid it grows linearly."""
        j = bisect.bisect_left(self.widths, width)
        if j == len(self.widths):
            at = [row[-1] * width / self.widths[-1] for row in self._ratios]
        else:
            at = [row[j] for row in self._ratios]
        lengths = self.context_lengths
        if context_length <= lengths[0]:
            return at[0]
        if context_length >= lengths[-1]:
            return at[-1]
        i = bisect.bisect_right(lengths, context_length)
        share = (context_length - lengths[i - 1]) / (lengths[i] - lengths[i - 1])
        return at[i - 1] + share * (at[i] - at[i - 1])

    def to_dict(self) -> dict:
        data = {"widths": self.widths, "context_lengths": self.context_lengths, "repeats": self.repeats,
                "batch_size": self.batch_size,
                "seconds": [[round(t, 6) for t in row] for row in self.seconds],
                "ratio": [[round(r, 3) for r in row] for row in self._ratios]}
        if self.origin is not None:
            data["origin"] = self.origin
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ForwardCostProfile":
        return cls(list(data["widths"]), list(data["context_lengths"]), [list(r) for r in data["seconds"]],
                   data.get("repeats", 0), data.get("batch_size", 1), data.get("origin"))

    @classmethod
    @torch.inference_mode()
    def measure(cls, engine, max_width: int, context_lengths: list[int], repeats: int = 3,
                seed: int = 0, batch_size: int = 1, done: dict | None = None,
                on_forward=None) -> "ForwardCostProfile":
        """Time forwards of 1..max_width tokens (random ids, causal) on caches of each context length, with
        `batch_size` rows of that many tokens each (a batched run's cost t(B, n)).

        Widths are interleaved within each repeat, so a burst of load hits all of them alike; each width's first
        forward in this process is untimed, so the kernels of its shape settle. `done` ({context length: [seconds
        of the timed forwards] per width}) holds what an earlier, killed measurement timed: only what is missing is
        timed. `on_forward(times)` is called after each timed forward with all of them, so they can be saved."""
        widths = profile_widths(max_width)
        times = {n: [list(row)[:repeats] for row in done[n]] if done and n in done else [[] for _ in widths]
                 for n in context_lengths}
        g = torch.Generator().manual_seed(seed)
        settled = set()
        for length in context_lengths:
            if min(map(len, times[length])) >= repeats:
                continue
            # (static mode pads a width up to its bucket; the rows below repeat the one prefilled)
            cache = engine.new_cache(length + 2 * max_width, max_rows=batch_size)
            engine._append(cache, torch.randint(engine.vocab_size, (length,), generator=g).tolist())
            if batch_size > 1:
                cache.select_rows([0] * batch_size)
            for rep in range(repeats):
                for w, timed in zip(widths, times[length]):
                    if len(timed) > rep:
                        continue
                    if w not in settled:
                        _time_forward(engine, cache, length, w, batch_size, g)
                        settled.add(w)
                    timed.append(_time_forward(engine, cache, length, w, batch_size, g))
                    if on_forward is not None:
                        on_forward(times)
        seconds = [[statistics.median(timed) for timed in times[n]] for n in context_lengths]
        return cls(widths, list(context_lengths), seconds, repeats, batch_size)


def _time_forward(engine, cache, length: int, width: int, batch_size: int,
                  g: torch.Generator) -> float:
    """Seconds of one forward of `width` random tokens per row on `cache`, cropped back to `length` after it."""
    ids = torch.randint(engine.vocab_size, (width,), generator=g).tolist()
    causal = torch.ones(width, width, dtype=torch.bool, device=engine.device).tril()
    depths = torch.arange(width, device=engine.device)
    engine.wait()
    start = engine.clock()
    engine._forward(cache, [ids] * batch_size, [causal] * batch_size, [depths] * batch_size)
    engine.wait()   # (static mode's clock does not wait for the device: its steps wait on their readback)
    seconds = engine.clock() - start
    cache.crop(length)
    return seconds


# ------------------------------------------------------------------------------------- the profile cache

CACHE_ENV = "SPECTTS_CACHE_DIR"
SAVE_SHARE = 0.05   # at most this share of the measuring time goes to saving its progress


def default_cache_dir() -> str:
    """$SPECTTS_CACHE_DIR/cost-profiles, else $XDG_CACHE_HOME/spectts/cost-profiles (~/.cache when unset)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spectts")
    return os.path.join(root, "cost-profiles")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile_key(model, model_path: str, device: torch.device, max_width: int, context_lengths: list[int],
                repeats: int, seed: int, batch_size: int, engine_mode: dict | None = None) -> dict:
    """What a measured profile depends on: the model (its path and a hash of its configuration, which holds its
    shapes and dtype), the device (GPU name and CUDA version; CPU model and thread count), the libraries and the
    measurement's parameters. Two runs with equal keys may share one profile."""
    import transformers
    config = model.config.to_json_string(use_diff=False)
    local = os.path.exists(model_path)
    if device.type == "cuda":
        hardware = {"device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                    "devices": len({p.device for p in model.parameters()})}
    else:
        hardware = {"device_name": cpu_name(), "threads": torch.get_num_threads()}
    return {"model_path": os.path.realpath(model_path) if local else model_path,
            "model_config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "attention": getattr(model.config, "_attn_implementation", None),
            "device_type": device.type, **hardware,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "widths": profile_widths(max_width), "context_lengths": list(context_lengths), "repeats": repeats,
            "seed": seed, "batch_size": batch_size,
            # (an eager profile is never a static one's: their costs differ in kind, not only in size)
            **({"engine": engine_mode} if engine_mode and engine_mode.get("engine_mode") != "eager" else {})}


class ProfileCache:
    """Measured forward-cost profiles on disk, one JSON file per key (named by the key's hash; the key is kept inside
    and must match on reading). A file holds `times` (the seconds of every timed forward so far, per context length
    and width), `complete`, and once complete the `cost_profile`. It is rewritten atomically as the measurement goes,
    so a run killed while measuring leaves what it timed for the next run to continue from."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"{digest}.json")

    def load(self, key: dict) -> dict | None:
        """The entry stored for `key`; None when there is none, or it is unreadable or for another key."""
        try:
            with open(self.path(key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not _valid_times(entry.get("times"), key):
            return None
        complete = entry.get("complete")
        if not isinstance(complete, bool) or complete and not _readable(entry.get("cost_profile")):
            return None
        return entry

    def save(self, key: dict, entry: dict) -> None:
        """Write `entry` for `key` atomically (a temporary file in the same folder, then renamed over it)."""
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, **entry}, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _remove_stale(glob.glob(glob.escape(path) + ".*.tmp"))


def _remove_stale(paths: list[str], age: float = 60.0) -> None:
    """Temporary files a killed writer left (one still being written by another process is younger than `age`)."""
    for path in paths:
        try:
            if time.time() - os.path.getmtime(path) > age:
                os.remove(path)
        except OSError:
            pass


def _readable(data) -> bool:
    try:
        ForwardCostProfile.from_dict(data)
        return True
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        return False


def _valid_times(times, key: dict) -> bool:
    """`times` as saved: {str(context length): [seconds of the timed forwards] per width} over the key's lengths."""
    if not isinstance(times, dict):
        return False
    lengths = set(map(str, key["context_lengths"]))
    return all(n in lengths and isinstance(rows, list) and len(rows) == len(key["widths"])
               and all(isinstance(timed, list) and len(timed) <= key["repeats"]
                       and all(isinstance(t, (int, float)) and t > 0 for t in timed) for timed in rows)
               for n, rows in times.items())


def cached_profile(engine, cache: ProfileCache | None, key: dict, remeasure: bool = False) -> ForwardCostProfile:
    """The profile for `key`: the cache's complete one (unless `remeasure`), else measured now, continuing from the
    forwards an interrupted measurement saved and saving progress as it goes (after a forward, once the time since
    the last save is 1 / SAVE_SHARE times what that save took). `origin` says which, and from which file. Without a
    cache (None, or one that cannot be written) it is measured in full here."""
    entry = cache.load(key) if cache is not None else None
    if entry is not None and entry["complete"] and not remeasure:
        profile = ForwardCostProfile.from_dict(entry["cost_profile"])
        profile.origin = {"source": "cache", "file": cache.path(key), "measured": entry.get("measured")}
        return profile
    interrupted = entry is not None and not entry["complete"]
    done = {int(n): rows for n, rows in entry["times"].items()} if interrupted else {}
    started = entry.get("started", time.time()) if interrupted else time.time()

    def save(times: dict, profile: ForwardCostProfile | None = None) -> None:
        nonlocal cache
        if cache is None:
            return
        saved = {"complete": profile is not None, "started": started,
                 "times": {str(n): rows for n, rows in times.items()}}
        if profile is not None:
            saved.update(measured=time.time(), cost_profile=profile.to_dict())
        try:
            cache.save(key, saved)
        except OSError as exc:
            print(f"warning: cannot write the forward-cost profile cache {cache.directory}: "
                  f"{exc.strerror or exc}; measuring without it", file=sys.stderr)
            cache = None

    latest, saved_at, save_seconds = done, time.perf_counter(), 0.0

    def keep(times: dict) -> None:
        nonlocal latest, saved_at, save_seconds
        latest = times
        if time.perf_counter() - saved_at >= save_seconds / SAVE_SHARE:
            start = time.perf_counter()
            save(times)
            saved_at = time.perf_counter()
            save_seconds = saved_at - start

    profile = ForwardCostProfile.measure(engine, key["widths"][-1], key["context_lengths"], key["repeats"],
                                         key["seed"], key["batch_size"], done=done, on_forward=keep)
    save(latest, profile)
    # As recorded (rounded): a run that measured decides with the numbers a run that reads them back gets.
    profile = ForwardCostProfile.from_dict(profile.to_dict())
    profile.origin = {"source": "measured", "file": None if cache is None else cache.path(key),
                      "continued_forwards": sum(len(timed) for rows in done.values() for timed in rows)}
    return profile
