"""SpS: speculative sampling with a separate draft model that shares the target's tokenizer.

Defaults follow the seed's SpS, which ran transformers' assisted generation with its defaults: a chain of up to 20
tokens, constant schedule, drafting stops after a token whose draft probability is under 0.4.
"""
from evaluation.run.cli import run_method
from model.engine.loading import DTYPES
from model.errors import UserError
from model.sps.drafter import SCHEDULES


def add_args(parser):
    parser.add_argument("--drafter-path", required=True,
                        help="draft model (a local directory or a hub id) with the target's tokenizer")
    parser.add_argument("--drafter-dtype", default=None, choices=sorted(DTYPES),
                        help="the draft model's dtype (default: the target's --dtype)")
    parser.add_argument("--num-assistant-tokens", type=int, default=20, help="longest drafted chain")
    parser.add_argument("--assistant-confidence-threshold", type=float, default=0.4,
                        help="stop drafting after a token whose draft probability is below this (0: never)")
    parser.add_argument("--num-assistant-tokens-schedule", choices=SCHEDULES, default="constant",
                        help="transformers' schedules. heuristic_transient: +2 tokens after a fully accepted chain, "
                             "-1 otherwise, from --num-assistant-tokens at every sequence; heuristic: the same, each "
                             "sequence starting at the length the previous one ended with (its default "
                             "--draft-state-scope is global: across the run)")


def check_args(args):
    from model.sps.drafter import check_parameters   # before the models load: a bad flag fails at once
    try:
        check_parameters(args.num_assistant_tokens, args.assistant_confidence_threshold,
                         args.num_assistant_tokens_schedule)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def make_drafter(args, model, tokenizer):
    from model.engine.loading import load_draft_model
    from model.sps import DraftModelDrafter
    draft = load_draft_model(args.drafter_path, model, tokenizer, f"--model-path {args.model_path}",
                             args.drafter_dtype)
    return DraftModelDrafter(draft, model.get_output_embeddings().weight.shape[0], args.num_assistant_tokens,
                             args.assistant_confidence_threshold, args.num_assistant_tokens_schedule)


if __name__ == "__main__":
    run_method("sps", make_drafter, add_args, check_args)
