"""Lookahead decoding: Jacobi lookahead branch + n-gram pool + verification branch in one target forward."""
from evaluation.run.cli import run_method
from model.errors import UserError


def add_args(parser):
    parser.add_argument("--level", type=int, default=5, help="n-gram size N (levels of the lookahead window + 1)")
    parser.add_argument("--window", type=int, default=7, help="columns of the lookahead window")
    parser.add_argument("--guess", type=int, default=7, help="n-grams verified per step (and kept per key)")


def check_args(args):
    for flag, low in (("level", 3), ("window", 1), ("guess", 1)):
        if getattr(args, flag) < low:
            raise UserError(f"--{flag} must be at least {low}, got {getattr(args, flag)}")
    size = (args.window - 1) + (args.level - 2) * args.window + args.guess * (args.level - 1)
    if size > args.max_tree_nodes:
        raise UserError(f"--level {args.level} --window {args.window} --guess {args.guess} needs {size} nodes per "
                        f"forward, over --max-tree-nodes {args.max_tree_nodes}")


def make_drafter(args, model, tokenizer):
    from model.lade import LookaheadDrafter
    return LookaheadDrafter(args.level, args.window, args.guess, seed=args.seed)


if __name__ == "__main__":
    run_method("lookahead", make_drafter, add_args, check_args)
