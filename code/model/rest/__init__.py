"""REST: Retrieval-based Speculative Decoding (He et al., 2024): drafts are the continuations of the
context's longest suffix found in a static datastore, merged into a trie and cut to the most frequent nodes."""
