"""REST: draft the continuations of the context's longest suffix found in a static datastore.

The datastore comes from `python -m model.rest.build_datastore` with the target's tokenizer.
"""
from evaluation.run.cli import run_method
from model.errors import UserError


def add_args(parser):
    parser.add_argument("--datastore-path", required=True, help="datastore built by model.rest.build_datastore")
    parser.add_argument("--num-draft", type=int, default=64, help="draft tree nodes (also capped by --max-tree-nodes)")
    # --max-token-span is the seed's name for the longest suffix searched.
    parser.add_argument("--max-suffix", "--max-token-span", dest="max_suffix", type=int, default=16,
                        help="longest context suffix looked up")
    parser.add_argument("--min-suffix", type=int, default=2, help="shortest context suffix that may draft")
    parser.add_argument("--max-continuation", type=int, default=10, help="tokens retrieved after each occurrence")
    parser.add_argument("--max-occurrences", type=int, default=5000, help="occurrences read per lookup")


def check_args(args):
    from model.rest.datastore import read_header   # light: numpy only; fails before the model loads
    for flag in ("num_draft", "max_continuation", "max_occurrences", "min_suffix"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.max_suffix < args.min_suffix:
        raise UserError(f"--max-suffix ({args.max_suffix}) must be at least --min-suffix ({args.min_suffix})")
    read_header(args.datastore_path)


def make_drafter(args, model, tokenizer):
    from model.rest.datastore import Datastore
    from model.rest.drafter import RestDrafter
    datastore = Datastore.load(args.datastore_path, tokenizer)
    return RestDrafter(datastore, args.num_draft, args.max_suffix, args.min_suffix, args.max_continuation,
                       args.max_occurrences)


if __name__ == "__main__":
    run_method("rest", make_drafter, add_args, check_args)
