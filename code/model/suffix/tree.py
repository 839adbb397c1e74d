"""SuffixDecoding's index: a suffix tree over token sequences with occurrence counts, and its speculation.

Every suffix of every sequence is cut at `max_depth` tokens, so a node's count is the number of times the text on
its path occurs (as a string of at most max_depth tokens) in the sequences held. Paths without branches are one node
(its tokens are read from a sequence it occurs in: `ref[start:start + length]`), and each sequence keeps the nodes
where its last max_depth suffixes end, so appending a token costs at most max_depth node updates.

Children are kept in a list ordered by count, largest first; among equal counts the order is the one arctic-inference
0.3.0's C++ tree (csrc/suffix_decoding/suffix_tree.cc) keeps, because speculation follows the first child and ties
are common: a new child goes last; a child whose count rises goes first among its new equals if it was first among
its old ones, else last; one whose count falls goes first among its new equals. The updates of a new token run in
the same order as there (the longest active suffix first), speculation uses float32 arithmetic as there, and tree
speculation pops a binary heap exactly as libstdc++'s std::priority_queue does, so that our drafts, ties included, are
the reference's token for token (tests/test_suffix.py checks it against the built reference).
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

_F32 = struct.Struct("<f")


def f32(x: float) -> float:
    """x rounded to float32 (one float32 operation = the exact result rounded once, which double then this gives)."""
    return _F32.unpack(_F32.pack(x))[0]


@dataclass
class Draft:
    """A speculation: tokens in topological order, parents[i] = index of token i's parent (-1: the root), the
    estimated probability of each token (its path's counts), their sum (score) and the match that gave it."""
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    score: float = 0.0
    match_len: int = 0


class _Group:
    """The run of siblings that share a count: its first and last member."""
    __slots__ = ("head", "tail")

    def __init__(self, node):
        self.head = self.tail = node


class _Node:
    __slots__ = ("count", "token", "length", "ref", "start", "parent", "children", "first", "last", "prev", "next",
                 "group")

    def __init__(self, count=0, token=0, length=0, ref=None, start=-1, parent=None):
        self.count, self.token, self.length = count, token, length
        self.ref, self.start, self.parent = ref, start, parent
        self.children: dict[int, _Node] = {}
        self.first = self.last = None   # children, by count (largest first)
        self.prev = self.next = None     # siblings
        self.group = None


# -- the ordered sibling list --------------------------------------------------------------------------------------

def _unlink(node: _Node) -> None:
    group = node.group
    if group.head is node:
        if group.tail is not node:
            group.head = node.next
    elif group.tail is node:
        group.tail = node.prev
    node.group = None
    parent = node.parent
    if node.prev is not None:
        node.prev.next = node.next
    else:
        parent.first = node.next
    if node.next is not None:
        node.next.prev = node.prev
    else:
        parent.last = node.prev
    node.prev = node.next = None


def _link(node: _Node, before: _Node | None, after: _Node | None) -> None:
    """Put node between two adjacent siblings (None: an end of the list), at a boundary between count groups."""
    parent = node.parent
    node.prev, node.next = before, after
    if before is not None:
        before.next = node
    else:
        parent.first = node
    if after is not None:
        after.prev = node
    else:
        parent.last = node
    if before is not None and before.count == node.count:
        node.group = before.group
        node.group.tail = node
    elif after is not None and after.count == node.count:
        node.group = after.group
        node.group.head = node
    else:
        node.group = _Group(node)


def _replace(old: _Node, new: _Node) -> None:
    """`new` (same count) takes old's place among old's siblings."""
    parent = new.parent
    new.prev, new.next = old.prev, old.next
    if old.prev is not None:
        old.prev.next = new
    else:
        parent.first = new
    if old.next is not None:
        old.next.prev = new
    else:
        parent.last = new
    group = new.group = old.group
    if group.head is old:
        group.head = new
    if group.tail is old:
        group.tail = new
    old.prev = old.next = old.group = None


def _increment(node: _Node) -> None:
    before = node.prev
    if before is None or before.count != node.count:   # first of its group
        if before is not None and before.count == node.count + 1:
            target = before.group.head                   # -> first of the next group up
        else:
            target = None                                # -> stays, alone in its new group
    else:
        target = node.group.head                         # -> last of the next group up
    if target is None:
        after = node.next
        _unlink(node)
        node.count += 1
        _link(node, before, after)
    else:
        _unlink(node)
        node.count += 1
        _link(node, target.prev, target)


def _decrement(node: _Node) -> None:
    tail = node.group.tail                               # -> first of the next group down
    if tail is node:
        before, after = node.prev, node.next
    else:
        before, after = tail, tail.next
    _unlink(node)
    node.count -= 1
    _link(node, before, after)


# -- libstdc++'s binary heap (std::priority_queue with `a.prob < b.prob`): the order it pops equal probabilities -----

def _sift_up(heap: list, hole: int, top: int, item: tuple) -> None:
    parent = (hole - 1) // 2
    while hole > top and heap[parent][0] < item[0]:
        heap[hole] = heap[parent]
        hole = parent
        parent = (hole - 1) // 2
    heap[hole] = item


def _push(heap: list, item: tuple) -> None:
    heap.append(item)
    _sift_up(heap, len(heap) - 1, 0, item)


def _pop(heap: list) -> tuple:
    top = heap[0]
    item = heap.pop()
    n = len(heap)
    if n:
        hole = second = 0
        while second < (n - 1) // 2:
            second = 2 * (second + 1)
            if heap[second][0] < heap[second - 1][0]:
                second -= 1
            heap[hole] = heap[second]
            hole = second
        if n % 2 == 0 and second == (n - 2) // 2:
            second = 2 * (second + 1)
            heap[hole] = heap[second - 1]
            hole = second - 1
        _sift_up(heap, hole, 0, item)
    return top


class SuffixTree:
    def __init__(self, max_depth: int):
        if max_depth < 1:
            raise ValueError(f"the suffix tree's depth must be at least 1, got {max_depth}")
        self.max_depth = max_depth
        self.root = _Node()
        self.seqs: dict[int, list[int]] = {}
        self._active: dict[int, deque] = {}   # per sequence: the nodes where its last max_depth suffixes end

    def __len__(self) -> int:
        return len(self.seqs)

    def __deepcopy__(self, memo: dict) -> "SuffixTree":
        """A copy node by node without recursion: the nodes' sibling links chain as deep as a tree is wide, which
        the default deepcopy follows recursively (a RecursionError on long responses)."""
        twin = SuffixTree.__new__(SuffixTree)
        memo[id(self)] = twin
        twin.max_depth = self.max_depth
        seqs = {id(seq): list(seq) for seq in self.seqs.values()}
        twin.seqs = {key: seqs[id(seq)] for key, seq in self.seqs.items()}
        nodes, groups, stack = {}, {}, [self.root]
        while stack:
            node = stack.pop()
            nodes[id(node)] = _Node(node.count, node.token, node.length, None, node.start)
            stack.extend(node.children.values())
        stack = [self.root]
        while stack:
            node = stack.pop()
            new = nodes[id(node)]
            new.ref = None if node.ref is None else seqs.setdefault(id(node.ref), list(node.ref))
            new.parent = None if node.parent is None else nodes[id(node.parent)]
            new.children = {token: nodes[id(child)] for token, child in node.children.items()}
            new.first, new.last, new.prev, new.next = (None if n is None else nodes[id(n)]
                                                       for n in (node.first, node.last, node.prev, node.next))
            if node.group is not None:
                group = groups.get(id(node.group))
                if group is None:
                    group = groups[id(node.group)] = _Group(nodes[id(node.group.head)])
                    group.tail = nodes[id(node.group.tail)]
                new.group = group
            stack.extend(node.children.values())
        twin.root = nodes[id(self.root)]
        twin._active = {key: deque(nodes[id(n)] for n in active) for key, active in self._active.items()}
        return twin

    def extend(self, seq_id: int, tokens) -> None:
        for token in tokens:
            self.append(seq_id, token)

    def append(self, seq_id: int, token: int) -> None:
        seq = self.seqs.get(seq_id)
        if seq is None:
            seq = self.seqs[seq_id] = []
            self._active[seq_id] = deque()
        active = self._active[seq_id]
        root = self.root
        active.append(root)   # the suffix that starts with this token
        root.count += 1
        if len(active) > self.max_depth:
            active.popleft()  # the suffix that reached max_depth tokens stops growing
        seq.append(token)
        n = len(seq)
        for i, node in enumerate(active):
            child = node.children.get(token)
            if child is None:
                if node.count == 1 and node is not root:
                    # Only this suffix reaches the node: a leaf, which grows (its tokens read from this sequence).
                    node.ref, node.start = seq, n - 1 - node.length
                    node.length += 1
                else:
                    new = _Node(1, token, 1, seq, n - 1, node)
                    node.children[token] = new
                    _link(new, node.last, None)
                    active[i] = new
            elif node is not root and node.count == child.count + 1:
                # Every other suffix through the node goes on to this child, and this one ends at the node.
                if child.length == 1:   # the node and its child become one node
                    child.count = node.count
                    child.token, child.length = node.token, node.length + 1
                    child.ref, child.start = seq, n - child.length
                    child.parent = node.parent
                    _replace(node, child)
                    node.parent.children[node.token] = child
                    active[i] = child
                else:                   # the node takes the child's first token
                    node.length += 1
                    node.ref, node.start = seq, n - node.length
                    child.length -= 1
                    child.start += 1
                    first = child.ref[child.start]
                    if first != token:
                        del node.children[token]
                        node.children[first] = child
                    child.token = first
            elif child.length == 1:
                _increment(child)
                active[i] = child
            else:
                # Split the child after its first token; the suffix ends at the new node.
                mid = _Node(child.count, token, 1, seq, n - 1, node)
                _replace(child, mid)
                node.children[token] = mid
                child.length -= 1
                child.start += 1
                child.token = child.ref[child.start]
                child.parent = mid
                mid.children[child.token] = child
                mid.first = mid.last = child
                child.group = _Group(child)
                _increment(mid)
                active[i] = mid

    def remove(self, seq_id: int) -> None:
        """Forget a sequence: its suffixes' counts come off; nodes no other text reaches go."""
        seq = self.seqs.pop(seq_id)
        del self._active[seq_id]
        root = self.root
        for start in range(len(seq)):
            node = root
            root.count -= 1
            idx = start
            while idx < len(seq):
                child = node.children.get(seq[idx])
                if child is None:
                    break
                if child.count > 1:
                    _decrement(child)
                else:
                    _unlink(child)
                    del node.children[seq[idx]]
                    break
                idx += child.length
                node = child
            if node is not root and len(node.children) == 1:
                child = next(iter(node.children.values()))
                if child.count == node.count:   # no suffix ends at the node any more: merge it into its child
                    child.token, child.parent = node.token, node.parent
                    child.length += node.length
                    child.start -= node.length
                    _replace(node, child)
                    node.parent.children[node.token] = child
            # (nodes keep reading their tokens from the removed sequence's list, which stays alive while they do)

    def _match(self, pattern) -> tuple[_Node, int] | None:
        """The node where `pattern` ends and how many of its tokens it uses, or None if the text never holds it."""
        node, idx = self.root, 0
        for token in pattern:
            if idx >= node.length:
                node = node.children.get(token)
                if node is None:
                    return None
                idx = 0
            if node.ref[node.start + idx] != token:
                return None
            idx += 1
        return node, idx

    def speculate(self, context, max_spec_tokens: int, max_spec_factor: float = 1.0, max_spec_offset: float = 0.0,
                  min_token_prob: float = 0.1, use_tree_spec: bool = False) -> Draft:
        """The best-scored draft over every match of the context's last 1 .. len-1 tokens (a longer match wins a
        tie); a match of m tokens may draft max_spec_factor x m + max_spec_offset tokens (at most max_spec_tokens)."""
        best = Draft()
        factor, offset, min_prob = f32(max_spec_factor), f32(max_spec_offset), f32(min_token_prob)
        n = len(context)
        for m in range(1, n):
            found = self._match(context[n - m:])
            if found is None:
                break
            limit = max(min(max_spec_tokens, int(f32(f32(m * factor) + offset) + 1e-6)), 0)
            draft = (self._tree if use_tree_spec else self._path)(found[0], found[1], limit, min_prob)
            if draft.score >= best.score:
                best = draft
                best.match_len = m
        return best

    def continue_match(self, context, match_len: int, limit: int, min_token_prob: float = 0.1,
                       use_tree_spec: bool = False) -> Draft:
        """The draft of the match of the context's last `match_len` tokens, up to `limit` tokens whatever the match
        earns (its first tokens are that draft's: the chain or the best-first order does not depend on the limit)."""
        found = self._match(context[len(context) - match_len:]) if 0 < match_len < len(context) else None
        if found is None:
            return Draft()
        draft = (self._tree if use_tree_spec else self._path)(found[0], found[1], limit, f32(min_token_prob))
        draft.match_len = match_len
        return draft

    @staticmethod
    def _path(node: _Node, idx: int, limit: int, min_prob: float) -> Draft:
        """A chain: always the most frequent continuation, while its estimated probability stays >= min_prob."""
        draft = Draft()
        tokens, prob, score = draft.tokens, 1.0, 0.0
        while len(tokens) < limit and prob >= min_prob:
            if idx < node.length:
                draft.parents.append(len(tokens) - 1)
                tokens.append(node.ref[node.start + idx])
                draft.probs.append(prob)
                score = f32(score + prob)
                idx += 1
            else:
                child = node.first
                if child is None:
                    break
                prob = f32(prob * f32(f32(child.count) / f32(node.count)))
                node, idx = child, 0
        draft.score = score
        return draft

    @staticmethod
    def _tree(node: _Node, idx: int, limit: int, min_prob: float) -> Draft:
        """A tree: the likeliest continuations first (best-first on estimated probability), each >= min_prob."""
        draft = Draft()
        tokens, score = draft.tokens, 0.0
        heap = [(1.0, node, idx, -1)]
        while len(tokens) < limit and heap:
            prob, node, idx, parent = _pop(heap)
            if idx < node.length:
                tokens.append(node.ref[node.start + idx])
                draft.parents.append(parent)
                draft.probs.append(prob)
                score = f32(score + prob)
                _push(heap, (prob, node, idx + 1, len(tokens) - 1))
            else:
                child = node.first
                while child is not None:
                    p = f32(f32(prob * f32(child.count)) / f32(node.count))
                    if p < min_prob:
                        break
                    _push(heap, (p, child, 0, parent))
                    child = child.next
        draft.score = score
        return draft
