"""EAGLE-3: a trained draft head on the target's hidden states grows a dynamic tree (the seed's flags and defaults).

`--top-k` is the tree's branching here, as in the seed's EAGLE-3 launcher; the sampling top-k is `--sampling-top-k`.
"""
from evaluation.run.cli import run_method
from model.errors import UserError


def add_tree_args(parser, top_k_flag: str) -> None:
    """The EAGLE tree flags, shared with SAM[EAGLE-3]."""
    parser.add_argument("--total-token", dest="total_token", type=int, default=60,
                        help="draft tree size, the root included (the tree holds total-token - 1 draft nodes)")
    parser.add_argument("--depth", type=int, default=5, help="expansion steps after the first level")
    parser.add_argument(top_k_flag, dest="tree_top_k", type=int, default=10, help="children per expanded node")


def add_args(parser):
    add_tree_args(parser, "--top-k")
    parser.add_argument("--sampling-top-k", dest="top_k", type=int, default=0, help="top-k of the sampling")


def check_args(args):
    if not args.ea_model_path:
        raise UserError("--ea-model-path is required: the EAGLE-3 head (a directory or a hub id)")
    check_tree_args(args)


def check_tree_args(args):
    from model.eagle3.drafter import check_tree   # before the models load: a bad flag fails at once
    try:
        check_tree(args.total_token, args.depth, args.tree_top_k)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def eagle3_drafter(args, model, head_path):
    from model.eagle3 import Eagle3Drafter, load_head
    head, embedding, layers = load_head(head_path, model)
    return Eagle3Drafter(head, embedding, layers, args.total_token, args.depth, args.tree_top_k)


def make_drafter(args, model, tokenizer):
    return eagle3_drafter(args, model, args.ea_model_path)


if __name__ == "__main__":
    run_method("eagle3", make_drafter, add_args, check_args)
