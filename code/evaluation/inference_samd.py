"""SAM decoding: suffix automata over the text seen so far (dynamic) and an optional corpus (static).

`--tree_method token_recycle` gives SAM[Token Recycling] and `--tree_method eagle3 --tree_model_path HEAD` gives
SAM[EAGLE-3]: the auxiliary drafter drafts when no match is long enough (a switch per step, not a merge).
"""
import argparse

from evaluation.run.cli import run_method
from evaluation.inference_eagle3 import add_tree_args, check_tree_args, eagle3_drafter
from model.errors import UserError

BUILT_AUXILIARY = ("token_recycle", "eagle3")


def add_args(parser):
    parser.add_argument("--samd_n_predicts", type=int, default=40)
    parser.add_argument("--samd_len_threshold", type=int, default=5)
    parser.add_argument("--samd_len_bias", type=int, default=5)
    parser.add_argument("--static_sam_path", default=None,
                        help="static SAM built by `python -m model.samd.build_static_sam`")
    parser.add_argument("--tree_method", default=None, choices=["token_recycle", "eagle2", "eagle3"],
                        help="auxiliary drafter used when the automata have no long enough match")
    parser.add_argument("--tree_model_path", default=None, help="draft head of the auxiliary drafter (EAGLE-3)")
    parser.add_argument("--samd_tree_path", default=None, help=argparse.SUPPRESS)   # the seed's; unused
    add_tree_args(parser, "--tree-top-k")


def check_args(args):
    if args.tree_method and args.tree_method not in BUILT_AUXILIARY:
        raise UserError(f"--tree_method {args.tree_method} is not built yet; available: {', '.join(BUILT_AUXILIARY)}")
    if args.tree_method == "eagle3":
        if not args.tree_model_path:
            raise UserError("--tree_method eagle3 needs --tree_model_path: the EAGLE-3 head")
        check_tree_args(args)


def make_drafter(args, model, tokenizer):
    from model.samd.drafter import SamDrafter
    from model.samd.static_sam import StaticSam

    static = StaticSam.load(args.static_sam_path, tokenizer) if args.static_sam_path else None
    fallback = None
    if args.tree_method == "token_recycle":
        from model.recycling import TokenRecyclingDrafter
        fallback = TokenRecyclingDrafter(model.get_output_embeddings().weight.shape[0])
    elif args.tree_method == "eagle3":
        fallback = eagle3_drafter(args, model, args.tree_model_path)
    # With an auxiliary drafter SAM-Decoding always drafts n_predicts - 1 tokens from a match.
    alpha = 1e9 if fallback is not None else 4.0
    return SamDrafter(args.samd_n_predicts, args.samd_len_threshold, args.samd_len_bias, static=static,
                      alpha=alpha, fallback=fallback)


if __name__ == "__main__":
    run_method("samd", make_drafter, add_args, check_args)
