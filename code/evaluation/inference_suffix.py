"""SuffixDecoding (vLLM's method="suffix"): drafts from suffix trees over the request's text and earlier responses.

Flags and defaults are vLLM's (SpeculativeConfig: suffix_decoding_max_tree_depth 24, _max_cached_requests 10000,
_max_spec_factor 1.0, _min_token_prob 0.1; num_speculative_tokens = the tree depth) plus arctic-inference's
max_spec_offset (0, which vLLM does not pass) and use_tree_spec (off in vLLM: a chain).
"""
from evaluation.run.cli import run_method
from model.errors import UserError
from model.suffix.drafter import (MAX_CACHED_REQUESTS, MAX_SPEC_FACTOR, MAX_SPEC_OFFSET, MAX_TREE_DEPTH,
                                  MIN_TOKEN_PROB)


def add_args(parser):
    parser.add_argument("--suffix-decoding-max-tree-depth", type=int, default=MAX_TREE_DEPTH,
                        help="depth of the suffix trees: the match plus the draft is at most this long")
    parser.add_argument("--suffix-decoding-max-cached-requests", type=int, default=MAX_CACHED_REQUESTS,
                        help="responses kept in the global tree, the oldest evicted first (0: no global tree, "
                             "-1: no limit)")
    parser.add_argument("--suffix-decoding-max-spec-factor", type=float, default=MAX_SPEC_FACTOR,
                        help="a match of m tokens drafts at most factor x m + offset tokens")
    parser.add_argument("--suffix-decoding-max-spec-offset", type=float, default=MAX_SPEC_OFFSET)
    parser.add_argument("--suffix-decoding-min-token-prob", type=float, default=MIN_TOKEN_PROB,
                        help="draft only tokens whose estimated probability (from counts) is at least this")
    parser.add_argument("--num-speculative-tokens", type=int, default=None,
                        help="the most draft tokens a step (default: the tree depth, as vLLM)")
    parser.add_argument("--use-tree-spec", action="store_true",
                        help="draft a tree of the likeliest continuations, not one chain (vLLM drafts a chain)")
    parser.add_argument("--live-responses", action="store_true",
                        help="responses enter the global tree as they are generated (vLLM), so a row drafts from "
                             "its concurrent siblings' text so far; default: when they complete")


def check_args(args):
    """Bad values as one line, before a model loads (replay and the interleaved runs call this too)."""
    try:
        make_drafter(args, None, None)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def make_drafter(args, model, tokenizer):
    from model.suffix.drafter import SuffixDrafter
    return SuffixDrafter(args.suffix_decoding_max_tree_depth, args.suffix_decoding_max_cached_requests,
                         args.suffix_decoding_max_spec_factor, args.suffix_decoding_max_spec_offset,
                         args.suffix_decoding_min_token_prob, args.num_speculative_tokens, args.use_tree_spec,
                         args.live_responses)


if __name__ == "__main__":
    run_method("suffix", make_drafter, add_args, check_args)
