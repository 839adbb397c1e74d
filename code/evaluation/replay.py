"""`python -m evaluation.replay --answer-file A.jsonl --model-path TOKENIZER --method pld`: replay recorded traces
through a model-free drafter (the replay itself is evaluation/run/replay.py)."""
from evaluation.run.replay import main

if __name__ == "__main__":
    main()
