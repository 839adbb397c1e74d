"""Token Recycling: an adjacency matrix of the target's recycled top-8 candidates, expanded along a static tree."""
from evaluation.run.cli import run_method
from model.recycling import TokenRecyclingDrafter


def add_args(parser):
    parser.add_argument("--tree-version", default="2.2.2", help="static tree template (the seed's 80-node 2.2.2)")
    parser.add_argument("--draft-unknown-root", action="store_true",
                        help="draft from never-seen rows too (the seed's behaviour; wasteful at cold start)")


def make_drafter(args, model, tokenizer):
    vocab = model.get_output_embeddings().weight.shape[0]
    return TokenRecyclingDrafter(vocab, args.tree_version, draft_unknown_root=args.draft_unknown_root)


if __name__ == "__main__":
    run_method("recycling", make_drafter, add_args)
