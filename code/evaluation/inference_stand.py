"""STAND: draft trees sampled from a memory of the target's own next-token distributions after each n-gram."""
from evaluation.run.cli import run_method
from model.errors import UserError


def add_args(parser):
    parser.add_argument("--ngram-orders", type=int, nargs="+", default=[1, 2, 3, 4], metavar="N",
                        help="n-gram lengths the memory keys distributions by (lookups try the longest first)")
    parser.add_argument("--topk", type=int, default=8, help="tokens kept per stored distribution")
    parser.add_argument("--max-nodes", type=int, default=8,
                        help="draft tree size (the data-driven shape's budget; larger pays where wide forwards are cheap)")
    parser.add_argument("--max-depth", type=int, default=8)
    parser.add_argument("--max-children", type=int, default=4, help="children per node at most")
    parser.add_argument("--rebuild-every", type=int, default=8,
                        help="verifications between rebuilds of the tree shape from the acceptance counts")
    parser.add_argument("--no-prompt-ngrams", action="store_true",
                        help="do not index the prompt's n-grams (as point masses where no distribution is known)")
    parser.add_argument("--accepted-only", action="store_true",
                        help="learn only the distributions before emitted tokens, not those at rejected draft nodes")


def check_args(args):
    if min(args.ngram_orders) < 1:
        raise UserError(f"--ngram-orders must be positive integers, got {args.ngram_orders}")
    for flag in ("topk", "max_nodes", "max_depth", "max_children", "rebuild_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.max_nodes > args.max_tree_nodes:
        raise UserError(f"--max-nodes {args.max_nodes} is over --max-tree-nodes {args.max_tree_nodes}")


def make_drafter(args, model, tokenizer):
    from model.stand import StandDrafter
    vocab = model.get_output_embeddings().weight.shape[0]
    return StandDrafter(vocab, tuple(args.ngram_orders), args.topk, args.max_nodes, args.max_depth,
                        args.max_children, args.rebuild_every, prompt_ngrams=not args.no_prompt_ngrams,
                        learn_rejected=not args.accepted_only)


if __name__ == "__main__":
    run_method("stand", make_drafter, add_args, check_args)
