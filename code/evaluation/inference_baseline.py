"""Autoregressive baseline: the same engine with no drafter, so MAT is 1.00 by construction."""
from evaluation.run.cli import run_method
from model.engine import Drafter


def make_drafter(args, model, tokenizer) -> Drafter:
    return Drafter()


if __name__ == "__main__":
    run_method("baseline", make_drafter)
