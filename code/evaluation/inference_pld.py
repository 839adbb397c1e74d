"""Prompt Lookup Decoding: draft the continuation of the last n-gram's previous occurrence."""
from evaluation.run.cli import run_method
from model.pld import PromptLookupDrafter


def add_args(parser):
    parser.add_argument("--max-ngram", type=int, default=3)
    parser.add_argument("--min-ngram", type=int, default=1)
    parser.add_argument("--num-pred-tokens", type=int, default=10)
    parser.add_argument("--no-adaptive", action="store_true",
                        help="always draft --num-pred-tokens (the seed's PLD; implied by --cost-aware)")


def make_drafter(args, model, tokenizer):
    # Under --cost-aware the verifier decides how much of each draft to verify, from the measured forward cost and
    # acceptance; PLD's own length heuristic would decide it a second time, on less information, so it drafts whole.
    adaptive = not (args.no_adaptive or args.cost_aware)
    return PromptLookupDrafter(args.max_ngram, args.min_ngram, args.num_pred_tokens, adaptive=adaptive)


if __name__ == "__main__":
    run_method("pld", make_drafter, add_args)
