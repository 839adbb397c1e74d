"""PIA (antgroup's Lookahead): drafts retrieved from a trie of n-gram branches with frequencies.

`model.pia.trie` holds the trie (insertion, retrieval, eviction); `model.pia.drafter` the `PiaDrafter`.
This package file stays empty so that importing the trie does not import torch.
"""
