"""Every drafting method, built the way its CLI builds it: the registry the losslessness tests loop over."""
from model.engine import Drafter
from model.lade import LookaheadDrafter
from model.pld import PromptLookupDrafter
from model.recycling import TokenRecyclingDrafter
from model.samd.drafter import SamDrafter

METHODS = {
    "ar": lambda vocab: Drafter(),
    "pld": lambda vocab: PromptLookupDrafter(),
    "pld-fixed": lambda vocab: PromptLookupDrafter(adaptive=False),
    "samd": lambda vocab: SamDrafter(),
    "samd-recycling": lambda vocab: SamDrafter(alpha=1e9, fallback=TokenRecyclingDrafter(vocab)),
    "recycling": lambda vocab: TokenRecyclingDrafter(vocab),
    "lookahead": lambda vocab: LookaheadDrafter(),
}
