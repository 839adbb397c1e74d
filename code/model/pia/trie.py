"""The PIA trie cache: every key token owns a trie of the branches (n-grams) that followed it.

Insertion. For each position i of a token stream, the branch stream[i+1 : i+1+depth] goes into the
trie of the key stream[i], and every node on it counts one more occurrence. depth = branch_length + 1,
so that a two-token match (key, next token) still leaves branch_length tokens to draft (the seed passes
branch_length + 1 to put / stream_put). Counts come in two kinds:
  * input counts: the prompt's branches, all added by `start_sequence` (PIA's mode='input'). They
    belong to one sequence: a node stamps its input count with the sequence number and a count with
    another stamp reads as zero, so a new sequence drops the previous prompt's counts in O(1) (PIA
    zeroes them by walking its trees, `reset_input_freqs`, when a request ends).
  * output counts: the generated text's branches (mode='output'), kept across sequences until the
    trie is replaced. A sequence's output stream starts with the last prompt token, as in the seed
    (whose stream starts with the pending token). A new token extends by one node each of the branches
    still growing (those whose key lies at most depth tokens back), so a token costs O(depth) whatever
    the context length, and at any moment the trie holds exactly the stream's branches cut at its
    end. (The seed's stream_put adds a branch only once all its depth tokens are known: ours can be
    drafted from at once, and are the same once complete.)

Retrieval (PIA's hier_get in mode 'mix'). The query is the last two context tokens (a, b):
  1. in a's trie, follow b and grow a draft from there; if it has at least min(branch_length - 1,
     budget) nodes (the seed: `len(ids) >= branch_length`, the root counted), it is the draft;
  2. otherwise the draft grown from the top of b's trie replaces it (if b has a trie).
Growing is greedy over the frontier of the kept nodes (a node is kept only after its parent; depth at
most branch_length; at most `budget` nodes):
  * first up to `output_quota` nodes by output count (the seed's min_output_size = decoding_length // 2),
  * then by the mix score (1 - w) * input + w * output with w = output_weight = 1e-4 (the seed's
    default): prompt branches first, output counts breaking ties.
A child never counts more than its parent, so this keeps the most frequent nodes, like the seed's
frequency thresholds. Equal counts go to the deeper node, then to the branch seen first, so ties grow
one branch deep before the next, like the seed's depth-first walk. Nodes whose counts read zero (an
earlier prompt's branches) are skipped.
Cost: each kept node offers its children to the frontier. A node with more than SCAN_ALL = 32 children
(frequent tokens gather thousands as the context grows) offers only its BEST_FEW = 16 children by
output count and 16 by input count, a ranking cached and redone once the node's own count has moved
by an eighth of its fanout; so a step costs at most two drafts of <= budget nodes x 32 offers, whatever
the context length. (A child that has just climbed into a large node's top 16 waits for the next
ranking: the only departure from the exact greedy choice.)

Eviction (PIA's Tree.squeeze). When a key's trie grows past `tree_capacity` nodes (the seed's
max_node, 65536), its output counts above 1 are halved and the nodes whose output count was at most 1
are dropped with their subtrees, unless they hold input counts of the current prompt or lie on a branch
still growing; this repeats until the trie holds at most half the capacity or nothing is left to halve.
The next eviction comes once the trie exceeds max(tree_capacity, twice what it kept), so each inserted
node pays a few node visits, amortized, and a key's trie never holds more than max(tree_capacity,
twice the current prompt's and the growing branches' nodes). The seed calls squeeze only from the
end-of-request put, which it leaves commented out.

Storage. Nodes are integer ids into parallel lists (children: token -> child id, output count, input
count and its sequence stamp), as in the SAM automaton: a dict of ints is invisible to Python's
garbage collector, whereas a trie of node objects makes every collection walk millions of them
(building a 100k-token trie of objects took 13x longer with the collector on than off).
"""
from __future__ import annotations

from collections import deque
from heapq import heappop, heappush, nlargest
from itertools import count

OUTPUT_WEIGHT = 1e-4
TREE_CAPACITY = 65536
SCAN_ALL = 32        # a node with more children offers only its BEST_FEW by each ranking, cached
BEST_FEW = 16


class PiaTrie:
    def __init__(self, branch_length: int = 12, tree_capacity: int = TREE_CAPACITY,
                 output_weight: float = OUTPUT_WEIGHT):
        self.branch_length = branch_length
        self.depth = branch_length + 1
        self.tree_capacity = tree_capacity
        self.output_weight = output_weight
        self.keys: dict[int, int] = {}          # key token -> root node of its trie
        self.trie_size: dict[int, int] = {}     # root -> nodes below it
        self.evict_above: dict[int, int] = {}   # root -> size that triggers an eviction
        self.children: list[dict[int, int]] = []
        self.out: list[float] = []              # occurrences in generated text
        self.inp: list[float] = []              # occurrences in the prompt of sequence inp_seq
        self.inp_seq: list[int] = []
        self.free: list[int] = []               # ids of evicted nodes, reused first
        # node with many children -> (sequence, its output count, best (token, child) pairs) when ranked
        self.best_children: dict[int, tuple[int, float, list[tuple[int, int]]]] = {}
        self.sequence = 0
        # Output branches still growing, oldest first: [root, node, ..., current end]; one deque per output stream
        # (several when the concurrent samples of a question share this trie), the first the default.
        self.growing: deque[list[int]] = deque()
        self.streams: list[deque] = [self.growing]

    # -- counts ------------------------------------------------------------------------------
    def input_count(self, node: int) -> float:
        return self.inp[node] if self.inp_seq[node] == self.sequence else 0.0

    def node_at(self, key: int, path: list[int]) -> int | None:
        node = self.keys.get(key)
        for token in path:
            if node is None:
                return None
            node = self.children[node].get(token)
        return node

    def counts(self, key: int, path: list[int]) -> tuple[float, float] | None:
        """(input count, output count) of the node reached from `key` along `path`, or None."""
        node = self.node_at(key, path)
        return None if node is None else (self.input_count(node), self.out[node])

    def node_count(self) -> int:
        return sum(self.trie_size.values())

    # -- insertion ---------------------------------------------------------------------------
    def attach(self, stream: deque) -> None:
        """Add an output stream (a concurrent sample's): its growing branches are pinned like the default's."""
        if not any(stream is s for s in self.streams):
            self.streams.append(stream)

    def start_sequence(self, prompt: list[int], stream: deque | None = None) -> None:
        """Replace the prompt counts by this prompt's; its last token starts the output stream."""
        stream = self.growing if stream is None else stream
        self.sequence += 1
        stream.clear()
        for i in range(len(prompt) - 1):
            self._add_input_branch(prompt[i], prompt[i + 1: i + 1 + self.depth])
        if prompt:
            self._open_branch(prompt[-1], stream)

    def extend_output(self, tokens: list[int], stream: deque | None = None) -> None:
        stream = self.growing if stream is None else stream
        for token in tokens:
            self._add_output_token(token, stream)

    def _new_node(self) -> int:
        if self.free:
            return self.free.pop()   # fields were cleared when it was evicted
        self.children.append({})
        self.out.append(0.0)
        self.inp.append(0.0)
        self.inp_seq.append(-1)
        return len(self.out) - 1

    def _root(self, key: int) -> int:
        root = self.keys.get(key)
        if root is None:
            root = self.keys[key] = self._new_node()
            self.trie_size[root] = 0
            self.evict_above[root] = self.tree_capacity
        return root

    def _open_branch(self, key: int, stream: deque) -> None:
        root = self._root(key)
        self.out[root] += 1.0   # the key's own count: tells when its ranked children are stale
        stream.append([root])

    def _add_input_branch(self, key: int, branch: list[int]) -> None:
        root = self._root(key)
        children, inp, inp_seq, sequence = self.children, self.inp, self.inp_seq, self.sequence
        node = root
        for token in branch:
            child = children[node].get(token)
            if child is None:
                child = children[node][token] = self._new_node()
                self.trie_size[root] += 1
            if inp_seq[child] != sequence:
                inp[child], inp_seq[child] = 0.0, sequence
            inp[child] += 1.0
            node = child
        if self.trie_size[root] > self.evict_above[root]:
            self._evict(root)

    def _add_output_token(self, token: int, stream: deque) -> None:
        children, out, trie_size = self.children, self.out, self.trie_size
        crowded = []
        for path in stream:
            end = path[-1]
            child = children[end].get(token)
            if child is None:
                child = children[end][token] = self._new_node()
                root = path[0]
                trie_size[root] += 1
                if trie_size[root] > self.evict_above[root]:
                    crowded.append(root)
            out[child] += 1.0
            path.append(child)
        if stream and len(stream[0]) > self.depth:
            stream.popleft()   # its depth tokens are in: complete
        self._open_branch(token, stream)
        for root in crowded:
            if trie_size[root] > self.evict_above[root]:   # not already evicted for an earlier branch
                self._evict(root)

    # -- eviction ----------------------------------------------------------------------------
    def _evict(self, root: int) -> None:
        self.best_children.clear()   # rankings may name nodes about to be freed
        # Branches still growing keep their nodes: `growing` continues from them.
        pinned = {node for stream in self.streams for path in stream if path[0] == root for node in path}
        while True:
            self.trie_size[root], halved = self._squeeze(root, pinned)
            if self.trie_size[root] <= self.tree_capacity // 2 or not halved:
                break
        # Beyond half, what is left must stay: wait until the trie doubles, to keep evictions amortized.
        self.evict_above[root] = max(self.tree_capacity, 2 * self.trie_size[root])

    def _squeeze(self, node: int, pinned: set[int]) -> tuple[int, bool]:
        """Halve output counts above 1 below `node` and drop the other unprotected nodes.

        Returns (nodes kept, whether any count was halved)."""
        out, children = self.out, self.children[node]
        kept, halved = 0, False
        for token, child in list(children.items()):
            if out[child] > 1.0:
                out[child] *= 0.5
                halved = True
            elif child not in pinned and self.input_count(child) == 0.0:
                del children[token]      # its subtree counts no more than it does
                self._free_subtree(child)
                continue
            kept_below, halved_below = self._squeeze(child, pinned)
            kept += 1 + kept_below
            halved = halved or halved_below
        return kept, halved

    def _free_subtree(self, node: int) -> None:
        stack = [node]
        while stack:
            node = stack.pop()
            stack.extend(self.children[node].values())
            self.children[node] = {}
            self.out[node] = self.inp[node] = 0.0
            self.inp_seq[node] = -1
            self.free.append(node)

    # -- retrieval ---------------------------------------------------------------------------
    def retrieve(self, query: list[int], budget: int, output_quota: int) -> tuple[list[int], list[int]]:
        """(tokens, parents) of the draft for a context ending in `query` (PIA: its last two tokens)."""
        enough = min(self.branch_length - 1, budget)
        tokens, parents = [], []
        for start, key in enumerate(query):
            root = self.keys.get(key)
            if root is None:
                continue
            top = self._follow(root, query[start + 1:])
            tokens, parents = self._grow_draft(top, budget, output_quota) if top is not None else ([], [])
            if len(tokens) >= enough:
                break   # long enough: no need for the shorter match
        return tokens, parents

    def _follow(self, node: int, path: list[int]) -> int | None:
        for token in path:
            node = self.children[node].get(token)
            if node is None or (self.out[node] <= 0.0 and self.input_count(node) <= 0.0):
                return None
        return node

    def _grow_draft(self, top: int, budget: int, output_quota: int) -> tuple[list[int], list[int]]:
        """The draft below node `top`: greedy over the frontier, by output count, then by mix score."""
        out, inp, inp_seq = self.out, self.inp, self.inp_seq
        sequence, weight = self.sequence, self.output_weight
        tokens, parents, taken = [], [], set()
        # Ties: deeper node first, then the branch seen first (see the module docstring).
        by_output, by_mix, ticket = [], [], count()

        def offer(node: int, parent: int, depth: int) -> None:
            for token, child in self._candidates(node):
                child_inp = inp[child] if inp_seq[child] == sequence else 0.0
                child_out = out[child]
                if child_inp <= 0.0 and child_out <= 0.0:
                    continue   # an earlier prompt's branch
                entry = (token, child, parent, depth)
                n = next(ticket)
                if child_out > 0.0:
                    heappush(by_output, (-child_out, -depth, n, entry))
                heappush(by_mix, (-((1.0 - weight) * child_inp + weight * child_out), -depth, n, entry))

        offer(top, -1, 1)
        while len(tokens) < budget:
            heap = by_output if by_output and len(tokens) < output_quota else by_mix
            if not heap:
                break
            token, node, parent, depth = heappop(heap)[3]
            if node in taken:
                continue   # already kept from the other heap
            taken.add(node)
            tokens.append(token)
            parents.append(parent)
            if depth < self.branch_length:
                offer(node, len(tokens) - 1, depth + 1)
        return tokens, parents

    def _candidates(self, node: int):
        """The (token, child) pairs worth offering: all children, or for a node with more than SCAN_ALL
        the BEST_FEW by output count and by input count, ranked again once the node's own count has
        moved by an eighth of its fanout (at least 4): O(1) ranking work per count increment, amortized."""
        children = self.children[node]
        if len(children) <= SCAN_ALL:
            return children.items()
        ranked = self.best_children.get(node)
        if (ranked is None or ranked[0] != self.sequence
                or abs(self.out[node] - ranked[1]) >= max(4, len(children) // 8)):
            ranked = self.best_children[node] = (self.sequence, self.out[node], self._rank(children))
        return ranked[2]

    def _rank(self, children: dict[int, int]) -> list[tuple[int, int]]:
        out = self.out
        by_output = nlargest(BEST_FEW, children.items(), key=lambda pair: out[pair[1]])
        by_input = nlargest(BEST_FEW, children.items(), key=lambda pair: (self.input_count(pair[1]), out[pair[1]]))
        return list(dict.fromkeys(by_output + by_input))
