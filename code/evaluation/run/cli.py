"""Entry point shared by the `inference_<method>` modules: flags, then the shared loop, errors as one line."""
from __future__ import annotations

import sys

from evaluation.run.args import build_parser, finalize
from model.errors import UserError
from model.locations import check_location


def run_method(method: str, make_drafter, add_method_args=None, check_method_args=None) -> None:
    parser = build_parser(method)
    if add_method_args:
        add_method_args(parser)
    args = parser.parse_args()

    def body():
        finalize(args, method)
        if check_method_args:
            check_method_args(args)
        check_location(args.model_path, "--model-path")   # (before the heavy imports: a typo is answered at once)
        evaluate(args, make_drafter)

    run_reporting(body)


def evaluate(args, make_drafter) -> None:
    """Answer every selected question: in this process, or on Ray replicas that each run the same loop."""
    from evaluation.run import replicas   # light; Ray itself is imported only when replicas are asked for
    if replicas.replica_count(args) > 1:
        replicas.run_replicated(args, make_drafter)
    else:
        from evaluation.run.loop import run_eval  # heavy imports only once the flags are known to be good
        run_eval(args, make_drafter)


def run_reporting(body) -> None:
    """Run a command: a user mistake is one 'error: ...' line and exit 2; Ctrl-C says what was kept."""
    try:
        body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: completed turns are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
