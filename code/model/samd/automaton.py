"""Suffix automaton over token ids, built incrementally, and a matcher that walks it.

The automaton recognises every substring of `tokens`. States are kept as parallel lists (one entry per
state) rather than objects: fewer attribute look-ups on the per-token path and a plain structure to
rebuild. State 0 is the root (the empty string).

For every state we keep `first_end`, the index in `tokens` of the last token of the first occurrence of
its strings, so the continuation after a match is `tokens[first_end + 1:]`. SAM-Decoding uses the same
first end position (`min_endpos`); unlike a most-recent end, it stays exact at O(1) cost per token
(a new occurrence would have to be pushed up the whole suffix-link chain).
"""
from __future__ import annotations


class SuffixAutomaton:
    def __init__(self, tokens=()):
        self.next: list[dict[int, int]] = [{}]   # transitions: token -> state
        self.link: list[int] = [-1]              # suffix link (root: -1)
        self.length: list[int] = [0]             # length of the longest string in the state
        self.first_end: list[int] = [-1]         # end index of the first occurrence (root: none)
        self.tokens: list[int] = []
        self.last = 0                            # state of the whole token list
        for token in tokens:
            self.extend(token)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_states(self) -> int:
        return len(self.length)

    def extend(self, token: int) -> None:
        """Append one token (amortized O(1), the classic online construction)."""
        nxt, link, length, first_end = self.next, self.link, self.length, self.first_end
        end = len(self.tokens)
        self.tokens.append(token)
        cur = len(length)
        nxt.append({})
        link.append(0)
        length.append(length[self.last] + 1)
        first_end.append(end)
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                # q also holds longer strings that did not end here: split off the shorter ones.
                clone = len(length)
                nxt.append(nxt[q].copy())
                link.append(link[q])
                length.append(length[p] + 1)
                first_end.append(first_end[q])
                while p != -1 and nxt[p][token] == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        self.last = cur

    def extend_all(self, tokens) -> None:
        for token in tokens:
            self.extend(token)

    def repeat_match(self) -> tuple[int, int]:
        """(state, length) of the longest suffix of `tokens` that also ended earlier.

        That is exactly the suffix link of the last state, so matching the token stream against its
        own automaton needs no separate walk; its `first_end` is always before the last token.
        """
        state = self.link[self.last] if self.last else 0
        return state, self.length[state]

    def contains(self, seq) -> bool:
        """Whether `seq` is a substring of `tokens`."""
        state = 0
        for token in seq:
            state = self.next[state].get(token)
            if state is None:
                return False
        return True


class Matcher:
    """Longest suffix of a token stream that is a substring of an automaton's tokens.

    The automaton may keep growing (a concurrent sibling's text): the match stays a real occurrence of the stream's
    suffix, though possibly not the longest one until the stream moves on.

    `advance` is amortized O(1): the match grows by at most one per token and every suffix-link step
    shrinks it.
    """

    def __init__(self, automaton: SuffixAutomaton):
        self.automaton = automaton
        self.state = 0
        self.length = 0

    def reset(self) -> None:
        self.state = 0
        self.length = 0

    def advance(self, token: int) -> None:
        nxt, link, length = self.automaton.next, self.automaton.link, self.automaton.length
        state, matched = self.state, self.length
        while True:
            target = nxt[state].get(token)
            if target is not None:
                self.state, self.length = target, matched + 1
                return
            if state == 0:
                self.state, self.length = 0, 0
                return
            state = link[state]
            # (min: when the automaton grows while matched, a state may be split and its link be longer than the
            # match; the match never grows by falling back)
            matched = min(matched, length[state])
