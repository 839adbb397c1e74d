"""Every drafting method, built the way its CLI builds it: the registry the losslessness tests loop over.

A factory takes the vocabulary size and a corpus (token lists): REST retrieves from a datastore built over it,
the other methods ignore it.
"""
from model.engine import Drafter
from model.lade import LookaheadDrafter
from model.pia.drafter import PiaDrafter
from model.pld import PromptLookupDrafter
from model.recycling import TokenRecyclingDrafter
from model.rest.datastore import Datastore
from model.rest.drafter import RestDrafter
from model.samd.drafter import SamDrafter
from model.samd.static_sam import join_documents


def rest(vocab, corpus):
    separator = vocab - 1
    return RestDrafter(Datastore.build(join_documents(corpus, separator), separator, "test", "test"))


METHODS = {
    "ar": lambda vocab, corpus: Drafter(),
    "pld": lambda vocab, corpus: PromptLookupDrafter(),
    "pld-fixed": lambda vocab, corpus: PromptLookupDrafter(adaptive=False),
    "samd": lambda vocab, corpus: SamDrafter(),
    "samd-recycling": lambda vocab, corpus: SamDrafter(alpha=1e9, fallback=TokenRecyclingDrafter(vocab)),
    "recycling": lambda vocab, corpus: TokenRecyclingDrafter(vocab),
    "lookahead": lambda vocab, corpus: LookaheadDrafter(),
    "rest": rest,
    "pia": lambda vocab, corpus: PiaDrafter(),
}
