"""`python -m evaluation.interleaved`: several methods on one loaded model, interleaved per question (the run itself is
evaluation/run/interleaved.py)."""
from evaluation.run.interleaved import main

if __name__ == "__main__":
    main()
