"""PIA (Lookahead): multi-branch drafts retrieved from a trie of the prompt's and the output's n-grams."""
from evaluation.run.cli import run_method


def add_args(parser):
    parser.add_argument("--decoding-length", type=int, default=64,
                        help="tokens fed to the target per step, the root included (draft nodes + 1)")
    parser.add_argument("--branch-length", type=int, default=12, help="deepest draft branch")
    parser.add_argument("--tree-capacity", type=int, default=65536,
                        help="trie nodes kept per key token before low-frequency ones are evicted")


def make_drafter(args, model, tokenizer):
    from model.pia.drafter import PiaDrafter
    return PiaDrafter(args.decoding_length, args.branch_length, args.tree_capacity)


if __name__ == "__main__":
    run_method("pia", make_drafter, add_args)
