"""SAM-Decoding: retrieval drafts from suffix automata (dynamic over the text so far, static over a corpus).

Import from the submodules (`model.samd.drafter`, `.static_sam`, `.automaton`): this package file stays
empty so that `python -m model.samd.build_static_sam` rejects bad input before importing torch.
"""
