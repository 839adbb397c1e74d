"""`python -m evaluation.prepare_data --output FILE`: the benchmark's question file from the hub (the conversion itself
is evaluation/data/prepare.py)."""
from evaluation.data.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
