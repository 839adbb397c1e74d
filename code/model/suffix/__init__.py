"""SuffixDecoding (arXiv 2411.04975; vLLM's method="suffix"): drafts from suffix trees over the request's own text
and earlier responses, scored by counts. `tree` is the index, `cache` the global tree of responses, `drafter` the
drafter. This package file stays empty so that importing the tree does not import torch."""
