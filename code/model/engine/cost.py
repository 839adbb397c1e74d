"""Cost-aware verification: the target's measured forward cost decides how much of a draft to verify.

The forward cost t(n) of n tokens (root + draft nodes) comes from a `ForwardCostProfile` (`profile.py`: measured for
the model, dtype, device and engine mode at hand, and cached on disk).
`AcceptanceEstimate` keeps a running estimate, per draft source, of the probability that a node is accepted given
that its parent was, keyed by the node's depth, its rank among its siblings (drafters list the likelier child
first) and the size class of the proposal (a retrieval drafter proposes longer drafts for longer matches, which are
right more often). A depth never observed takes the estimate of the
deepest observed one above it. The chance that node i ends on the accepted path is then the
product of those estimates along its ancestry, pi_i, and a verified subtree S yields 1 + sum(pi_i, i in S) tokens
in expectation (the bonus token is the 1). `choose_nodes` picks the S, over every size, that maximises expected
tokens per unit of forward cost; S = {} is a plain autoregressive step. Acceptance is untouched: a cut draft is
still a tree of the proposal's nodes, verified by the same rule.
"""
from __future__ import annotations

from .profile import ForwardCostProfile
from .tree import DraftTree

MAX_DEPTH = 32       # deeper nodes share the estimate of depth MAX_DEPTH
MAX_RANK = 4         # siblings ranked 4th and later share one estimate
DECAY = 0.98         # weight of past observations per new one: the estimate follows changes within ~50 steps
GAIN_START = 1.5     # tokens per plain-step time assumed of a drafter before it is measured: try drafting first
STEP_EMA = 0.1       # weight of each new step in the gain and plain-step-time averages
PROBE_EVERY = 8      # while drafting does not pay, the drafter is still asked after this many steps, ...
PROBE_MAX = 64       # ... an interval that doubles after each probe that did not pay, up to this
PROBE_COST = 1.5     # a probe verifies no more than a forward of this many plain steps' cost holds (one node at least)
PROBE_NODES_AT_BATCH = 1   # ... and at batch > 1 no more than this many draft nodes per row
SKIP_BELOW = 0.95    # gain under which drafting is judged not to pay (a margin over 1 for timing noise)
SEQUENCE_MEMORY = 8  # observations a group's counts are worth at most when a new sequence (round, sample) starts
PRIOR_MEAN = 0.9     # the first draft node's acceptance before any is seen: optimistic, so drafts get tried
PRIOR_WEIGHT = 2.0   # pseudo-observations of the estimate a group borrows, mixed with its own counts
OBSERVED_MIN = 4     # verifications of a width (and plain steps) seen before their measured time replaces the profile
CALIBRATION_WEIGHT = 4.0   # pseudo draft tokens of the calibration's prior (accepted = expected: a factor of 1)


def sibling_ranks(parents: list[int]) -> list[int]:
    seen: dict[int, int] = {}
    ranks = []
    for p in parents:
        ranks.append(seen.get(p, 0))
        seen[p] = ranks[-1] + 1
    return ranks


def size_class(nodes: int) -> int:
    """Proposal sizes 1, 2-3, 4-7, 8-15, ... share an estimate."""
    return nodes.bit_length()


class AcceptanceEstimate:
    """P(node accepted | parent accepted), per (draft source, proposal size class, sibling rank, depth), with
    exponential forgetting.

    A group's own counts are mixed with PRIOR_WEIGHT pseudo-observations of the estimate of its nearest coarser
    neighbour: the same rank one level up (a depth never observed is as the deepest observed above it), and at
    depth 1 the next likelier sibling rank (drafters list the likelier child first), down to PRIOR_MEAN for the
    first child of the root. So a rarely reached node of a wide tree is judged like its observed neighbours, not
    by the optimistic prior."""

    def __init__(self, decay: float = DECAY, prior_mean: float = PRIOR_MEAN, prior_weight: float = PRIOR_WEIGHT):
        self.decay, self.prior_mean, self.prior_weight = decay, prior_mean, prior_weight
        self.counts: dict[tuple, list[float]] = {}

    def reset(self) -> None:
        self.counts.clear()

    def shrink(self, limit: float) -> None:
        """Keep each group's mean but let its counts weigh at most `limit` observations, so what comes next (a
        round that quotes the one before, where drafts fail no more) outweighs them within a few verifications."""
        for counts in self.counts.values():
            if counts[1] > limit:
                counts[0] *= limit / counts[1]
                counts[1] = limit

    def conditional(self, source: str, depth: int, rank: int, size: int = 1, memo: dict | None = None) -> float:
        """`memo`: estimates already worked out for this source and size, keyed (depth, rank)."""
        depth, rank = min(depth, MAX_DEPTH), min(rank, MAX_RANK)
        memo = {} if memo is None else memo
        if (depth, rank) in memo:
            return memo[depth, rank]
        if depth > 1:
            toward = self.conditional(source, depth - 1, rank, size, memo)
        elif rank > 0:
            toward = self.conditional(source, 1, rank - 1, size, memo)
        else:
            toward = self.prior_mean
        counts = self.counts.get((source, size_class(size), rank, depth))
        value = toward if counts is None else \
            (counts[0] + self.prior_weight * toward) / (counts[1] + self.prior_weight)
        memo[depth, rank] = value
        return value

    def path_probs(self, tree: DraftTree, size: int | None = None) -> list[float]:
        """pi_i: the estimated chance that node i is on the accepted path (`size`: the proposal's node count)."""
        size = len(tree.tokens) if size is None else size
        pi, memo = [], {}
        for p, depth, rank in zip(tree.parents, _depths(tree), sibling_ranks(tree.parents)):
            pi.append(self.conditional(tree.source, depth, rank, size, memo) * (1.0 if p < 0 else pi[p]))
        return pi

    def update(self, tree: DraftTree, path: list[int], size: int | None = None) -> None:
        """Count every node whose parent was accepted (the root always is) as observed, and accepted if on `path`.
        `size`: node count of the proposal `tree` was cut from (default: its own)."""
        if not tree.tokens:
            return
        size_key = size_class(len(tree.tokens) if size is None else size)
        on_path = set(path)
        for i, (p, depth, rank) in enumerate(zip(tree.parents, _depths(tree), sibling_ranks(tree.parents))):
            if p < 0 or p in on_path:
                key = (tree.source, size_key, min(rank, MAX_RANK), min(depth, MAX_DEPTH))
                counts = self.counts.setdefault(key, [0.0, 0.0])
                counts[0] = counts[0] * self.decay + (i in on_path)
                counts[1] = counts[1] * self.decay + 1.0


def _depths(tree: DraftTree) -> list[int]:
    if len(tree.depths) == len(tree.parents):
        return tree.depths    # filled by `validate`
    depths = []
    for p in tree.parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def choose_nodes(pi: list[float], fixed: int, cost, bound: float | None = None) -> list[int]:
    """The nodes to verify: of every size m, the m likeliest nodes (an ancestor-closed set, since a child is never
    likelier than its parent), taking the m that maximises (1 + sum pi) / cost(1 + fixed + m), where m = 0 is a plain
    step (one token at cost 1: auxiliary nodes go with the draft). `fixed` counts the auxiliary nodes verified with
    any draft; `cost(width)` is t(width)/t(1); sizes whose forward costs more than `bound` are passed over. Ties go to
    fewer nodes."""
    order = sorted(range(len(pi)), key=lambda i: (-pi[i], i))
    best_m, best_rate, expected = 0, 1.0 / cost(1), 1.0
    for m, i in enumerate(order, start=1):
        expected += pi[i]
        rate = expected / cost(1 + fixed + m)
        if rate > best_rate and (bound is None or cost(1 + fixed + m) <= bound):
            best_m, best_rate = m, rate
    return sorted(order[:best_m])


def batch_steps_saved(reach: list[list[float]], remaining: list[int]) -> float:
    """Expected batch steps a step saves beyond a plain one: the drop in the number of steps until the last row is
    done, max_b (remaining_b - 1 - a_b) against max_b (remaining_b - 1), a_b the extra tokens row b accepts.

    With g_b = max remaining - remaining_b (how far row b is ahead) and S_b(k) = P(a_b >= k) (`reach[b][k - 1]`; 1
    for k <= 0; 0 past the row's remaining tokens), the rows independent: saved = sum over j >= 1 of
    prod_b S_b(j - g_b). One row: its expected extra tokens. Rows level with each other: the steps all of them save."""
    most = max(remaining)
    saved, j = 0.0, 1
    while True:
        term = 1.0
        for at_least, left in zip(reach, remaining):
            k = j - (most - left)
            if k <= 0:
                continue
            term *= at_least[k - 1] if k <= len(at_least) and k <= left - 1 else 0.0
            if term == 0.0:
                break
        if term == 0.0:
            return saved
        saved += term
        j += 1


def expected_extra(at_least: list[float], left: int) -> float:
    """Expected draft tokens one row accepts, sum over k of P(a >= k), counting none past its remaining tokens (the
    last one is always the bonus)."""
    return sum(at_least[:max(left - 1, 0)])


def likeliest_path(parents: list[int]) -> list[int]:
    """The root's first child, its first child, and so on (drafters list the likelier child first)."""
    path, tip = [], -1
    for i, p in enumerate(parents):
        if p == tip:
            path.append(i)
            tip = i
    return path


def cut(tree: DraftTree, keep: list[int], aux: bool = True) -> DraftTree:
    """The subtree of the nodes in `keep` (ancestor-closed, ascending), with parents renumbered; without the
    auxiliary nodes when `aux` is false."""
    if len(keep) == len(tree.tokens) and (aux or not tree.aux_tokens):
        return tree
    index = {old: new for new, old in enumerate(keep)}
    extra = dict(aux_tokens=tree.aux_tokens, aux_depths=tree.aux_depths, aux_mask=tree.aux_mask) if aux else {}
    return DraftTree([tree.tokens[i] for i in keep], [index.get(tree.parents[i], -1) for i in keep],
                     probs=None if tree.probs is None else tree.probs[keep], source=tree.source, **extra)


def probe_nodes(tree: DraftTree, fixed: int, cost, most: int | None = None) -> tuple[list[int], bool]:
    """What a probe verifies, and whether the auxiliary nodes (`fixed` of them) ride along: the longest prefix of the
    likeliest path (of at most `most` nodes) whose forward, with the auxiliary nodes, costs at most PROBE_COST plain
    steps; without them when even one node with them costs more; at least the path's first node. A probe is a look,
    not a bet: at 8 rows on a CPU a probe of PLD's whole 10-token path cost 2 plain steps, and Lookahead's 27-node
    window 4.6."""
    path = likeliest_path(tree.parents)[:most]
    if not path:
        return [], bool(fixed) and cost(1 + fixed) <= PROBE_COST
    for aux in ((True, False) if fixed else (False,)):
        n = len(path)
        while n and cost(1 + (fixed if aux else 0) + n) > PROBE_COST:
            n -= 1
        if n:
            return path[:n], aux
    return path[:1], False


class CostAwareVerifier:
    """The engine's width chooser: cuts each proposal to the nodes worth their forward cost, or asks for more; and
    stops asking for drafts while drafting plus verifying has been yielding less than a plain step.

    Cost: the profile's t(n)/t(1) until this run has timed both n-token verifications and plain steps
    OBSERVED_MIN times; from then on the ratio of their running averages. The profile is a few forwards of random
    tokens measured before the run; what the run's own verifications cost (acceptance and cache bookkeeping
    included) corrects it where it was off, and a width it made look cheap is tried once and then judged on its
    real cost.

    The gate is measured, not modelled: `gain` is an exponential average, over steps that drafted, of tokens emitted
    per plain-step time spent (drafting + verifying seconds / the seconds of a plain one-token step, itself an
    average over the plain steps seen, starting from the profile's t(1)); at batch > 1 the engine reports as emitted
    how many batch steps nearer the step brought the batch's end, as `plan_batch` values a step. While the gain is
    under SKIP_BELOW the drafter is asked only on probe steps, so the average keeps following it (a second round
    that repeats the first is found): after PROBE_EVERY steps in which none of its drafts was verified, an interval
    that doubles (up to PROBE_MAX) after each probe that did not pay and starts again from PROBE_EVERY after one
    that did, so a drafter that never pays costs little; each new sequence (round, sample) is probed on its first
    step (at batch > 1 without the interval starting again). Steps whose proposal was empty do not count: a drafter
    that often has nothing to say (SAM without a match) is not silenced for it. At batch > 1 the drafters are asked
    only on probes, whatever the gain, once the chooser has cut every draft for PROBE_EVERY steps or a verified draft
    did not pay, until a verified draft pays; and a probe there verifies PROBE_NODES_AT_BATCH draft nodes per row.

    Exploration: the estimate learns only from what is verified, so a source whose estimate fell below what any
    width costs would never be verified again, even once its drafts come right (round 2 quoting round 1). Proposals
    cut to nothing count as unverified steps like skipped ones, and a probe verifies at least the proposal's
    likeliest path; at each new sequence the counts shrink to SEQUENCE_MEMORY observations, so the new sequence's
    first verifications outweigh the old ones.

    Auxiliary nodes (Lookahead's window) are never accepted but feed the drafter's future drafts, which no estimate
    values: when no draft node is worth verifying they are dropped with the draft unless they are nearly free
    (within 1 / SKIP_BELOW of a plain step, as on a GPU), and they ride along on probes while the probe stays within
    PROBE_COST (`probe_nodes`). A probe with nothing but them to verify counts as a probe that did not pay.
    """

    def __init__(self, profile: ForwardCostProfile):
        self.profile = profile
        self.estimate = AcceptanceEstimate()
        self.proposed = 0   # node count of the last proposal: its size class keys the estimate
        self.reset()

    def reset(self) -> None:
        self.estimate.reset()
        self.calibration = [0.0, 0.0]   # decayed sums over verified drafts: draft tokens accepted, and expected
        self.gain = GAIN_START
        self.plain_seconds = None   # average seconds of a plain step; None: the profile's t(1)
        self.unverified = 0         # steps since a draft of this drafter was last verified (skipped or cut away)
        self.interval = PROBE_EVERY
        self.probing = False
        self.last_paid = True       # whether the last step that verified a draft paid (`should_draft` at batch)
        self.forward_seconds: dict[int, list[float]] = {}   # verified width -> [running average seconds, count]

    def begin_sequence(self, rows: int = 1) -> None:
        """A new round or sample (`rows`: of a batch of that many): its context may hold what drafts copy (round 2
        quotes round 1), so a drafter that has not been paying is probed on its first step, and the acceptance counts
        shrink to SEQUENCE_MEMORY observations. At batch 1 the probe interval starts again from PROBE_EVERY; at
        batch > 1 it stays as long as probes made it: there a draft pays only when every lagging row's does, which a
        new question seldom changes, while a batch of short samples (48 tokens) would otherwise pay 3 probes each."""
        if rows == 1:
            self.interval = PROBE_EVERY
        self.unverified = self.interval - 1
        self.estimate.shrink(SEQUENCE_MEMORY)
        if self.calibration[1] > SEQUENCE_MEMORY:
            self.calibration = [a * SEQUENCE_MEMORY / self.calibration[1] for a in self.calibration]

    def factor(self) -> float:
        """Accepted over expected draft tokens of the drafts verified lately (at most 1): how optimistic the estimate
        has been. A verified draft is one the chooser judged worth its cost, so its estimate is biased upward (the
        winner's curse; the prior is optimistic on purpose); expected tokens are scaled down by this factor."""
        accepted, expected = self.calibration
        return min(1.0, (accepted + CALIBRATION_WEIGHT) / (expected + CALIBRATION_WEIGHT))

    def should_draft(self, rows: int = 1) -> bool:
        """Whether the drafters are asked this step (`rows`: the batch's rows)."""
        if self.unverified + 1 >= self.interval:
            self.probing = True
            return True
        # At batch > 1 the drafters are asked between probes only while the last verified draft paid and the chooser
        # has not cut every draft for PROBE_EVERY steps, however well drafts paid on average: a step pays there only
        # when every lagging row's draft is good, so unpaying and cut steps are the common case, and asking costs
        # every row's drafting time.
        if self.gain >= SKIP_BELOW and (rows == 1 or (self.last_paid and self.unverified < PROBE_EVERY)):
            return True
        self.unverified += 1
        return False

    def record_step(self, proposed: int, emitted: int, seconds: float, context_length: int,
                    verified: int | None = None) -> None:
        """After each step: `proposed` draft nodes (0: skipped or nothing proposed, a plain step), `verified` of
        them (default: all), `seconds` = drafting + verifying time."""
        verified = proposed if verified is None else verified
        plain = self.plain_seconds or self._profile_plain(context_length)
        if proposed == 0:
            self.plain_seconds = plain + STEP_EMA * (seconds - plain)
        else:
            step_gain = emitted / max(seconds / plain, 1e-9)
            self.gain += STEP_EMA * (step_gain - self.gain)
        # A probe is spent even when it had nothing to verify but auxiliary nodes (Lookahead before its pool has a
        # match): as one that did not pay, rather than repeated on every following step at their cost.
        if verified or (proposed and self.probing):
            self.last_paid = bool(verified) and step_gain >= 1.0
            if self.probing:
                self.interval = PROBE_EVERY if self.last_paid else min(2 * self.interval, PROBE_MAX)
            else:
                self.interval = PROBE_EVERY
            self.unverified = 0
        elif proposed:
            self.unverified += 1
        self.probing = False

    def record_forward(self, width: int, seconds: float) -> None:
        """The seconds a verification of `width` tokens (root, draft and auxiliary nodes) took in this run."""
        entry = self.forward_seconds.setdefault(width, [0.0, 0])
        entry[1] += 1
        entry[0] += max(1 / entry[1], STEP_EMA) * (seconds - entry[0])   # a plain mean over the first 1/STEP_EMA

    def cost(self, width: int, context_length: int) -> float:
        """t(width)/t(1): measured in this run once both widths were seen often enough, else the profile's."""
        one, this = self.forward_seconds.get(1), self.forward_seconds.get(width)
        if one is not None and this is not None and min(one[1], this[1]) >= OBSERVED_MIN:
            return this[0] / one[0]
        return self.profile.ratio(width, context_length)

    def _profile_plain(self, context_length: int) -> float:
        lengths, first = self.profile.context_lengths, [row[0] for row in self.profile.seconds]
        i = min(range(len(lengths)), key=lambda j: abs(lengths[j] - context_length))
        return first[i]

    def plan(self, tree: DraftTree, context_length: int, extend) -> DraftTree:
        """The part of `tree` to verify. `extend(n)` asks the drafter for a larger, validated draft of at most n
        nodes that starts with this one (None when it cannot give more); it is asked when the whole draft is worth
        verifying and a wider forward would cost no more."""
        def cost(width):
            return self.cost(width, context_length)

        fixed, self.proposed = len(tree.aux_tokens), len(tree.tokens)
        bound = PROBE_COST if self.probing else None   # a probe is a look, not a bet
        keep = choose_nodes(self._expected(tree), fixed, cost, bound)
        if tree.tokens and len(keep) == len(tree.tokens) and bound is None:
            wider = self._wider(len(tree.tokens), fixed, cost)
            if wider:
                bigger = extend(wider)
                if bigger is not None and len(bigger.tokens) > len(tree.tokens):
                    # The added nodes are judged as the proposal's deeper nodes: same size class.
                    tree = bigger
                    keep = choose_nodes(self._expected(tree, self.proposed), fixed, cost)
        return cut(tree, keep) if keep else self._nothing_pays(tree, fixed, cost)

    def _expected(self, tree: DraftTree, size: int | None = None) -> list[float]:
        """Each node's chance of being on the accepted path, as the estimate has it, corrected by `factor`."""
        factor = self.factor()
        return [factor * p for p in self.estimate.path_probs(tree, size)]

    def plan_batch(self, trees: list[DraftTree], context_length: int, remaining: list[int] | None = None,
                   per_token: bool = False, rows: int | None = None) -> list[DraftTree]:
        """The parts of a batch's proposals to verify, under one budget for the whole forward. Every row is padded
        to the step's widest, so the forward costs t(B, W) whatever each row verifies within W: the chooser picks
        the W that maximises what the step is worth per unit of that cost, each row verifying its W - 1 likeliest
        nodes (fewer if it has fewer). W = 1 is a plain step for every row; where no row's draft pays, the step is
        plain; a probe looks no wider than PROBE_COST, and at PROBE_NODES_AT_BATCH draft nodes per row at most:
        whether drafting pays in a batch is whether every lagging row accepts its first draft token, and on this CPU a
        6-token probe of 8 rows, judged 1.4 plain steps by the profile, cost 1.8-3.5 on a batch's first step. (Drafts
        are not extended at batch: propose_more is asked at batch 1 only.)

        What a step is worth: the batch runs until its last row is done, so a step is worth the batch steps it saves
        (`batch_steps_saved`), not the tokens its rows accept: a row ahead of the others leaves early whatever it
        accepts now, and rows level with each other finish together only as fast as the slowest of them.
        `remaining[b]`: the tokens row b may still emit (None: every row has as many left).

        `per_token` (continuous batching, while prompts wait to take the rows that finish): a token any row emits
        brings the end nearer, so a step is worth the tokens its `rows` rows emit, per row (1 for a plain step), as
        at batch 1; rows without a draft here (a forced phrase) count as emitting one."""
        def cost(width):
            return self.cost(width, context_length)

        remaining = remaining or [1 << 30] * len(trees)
        fixed = max(len(t.aux_tokens) for t in trees)
        probs = [self._expected(t) for t in trees]
        depths = [_depths(t) for t in trees]
        ranked = [sorted(range(len(pi)), key=lambda i: (-pi[i], i)) for pi in probs]
        # reach[b][k - 1] = P(row b accepts at least k draft tokens) from its m likeliest nodes, grown one node per
        # m: one path is accepted, so the chances of the nodes of one depth add up.
        reach = [[0.0] * max(d, default=0) for d in depths]
        best_m, best_rate = 0, 1.0 / cost(1)
        for m in range(1, max(map(len, ranked), default=0) + 1):
            for pi, d, order, at_least in zip(probs, depths, ranked, reach):
                if len(order) >= m:
                    node = order[m - 1]
                    at_least[d[node] - 1] = min(1.0, at_least[d[node] - 1] + pi[node])
            if self.probing and (m > PROBE_NODES_AT_BATCH or cost(1 + fixed + m) > PROBE_COST):
                continue
            extra = sum(map(expected_extra, reach, remaining)) / (rows or len(trees)) if per_token else \
                batch_steps_saved(reach, remaining)
            rate = (1.0 + extra) / cost(1 + fixed + m)
            if rate > best_rate:
                best_m, best_rate = m, rate
        planned = []
        for tree, order in zip(trees, ranked):
            keep = sorted(order[:best_m])
            planned.append(cut(tree, keep) if keep else self._nothing_pays(tree, fixed, cost, PROBE_NODES_AT_BATCH))
        return planned

    def _nothing_pays(self, tree: DraftTree, fixed: int, cost, most: int | None = None) -> DraftTree:
        """What is verified of a proposal with no node worth its width: on a probe, what `probe_nodes` takes (the
        estimate learns only from what is verified); else a plain step. Auxiliary nodes (Lookahead's window) feed
        future drafts, which no estimate values: they ride along while (nearly) free, and otherwise on probes only."""
        if self.probing:
            keep, aux = probe_nodes(tree, fixed, cost, most)
            return cut(tree, keep, aux)
        if tree.aux_tokens and cost(1 + fixed) > 1 / SKIP_BELOW:
            return DraftTree([], [], source=tree.source)
        return cut(tree, [])

    def update_row(self, tree: DraftTree, path: list[int], proposed: int) -> None:
        """After verifying one row's `tree` (a part of a proposal of `proposed` nodes)."""
        self._calibrate(tree, path, proposed)
        self.estimate.update(tree, path, proposed)

    def _calibrate(self, tree: DraftTree, path: list[int], size: int) -> None:
        if tree.tokens:
            self.calibration = [self.calibration[0] * DECAY + len(path),
                                self.calibration[1] * DECAY + sum(self.estimate.path_probs(tree, size))]

    def _wider(self, n: int, fixed: int, cost) -> int:
        """Node count of the widest measured forward, up to twice the draft, that costs no more than this one."""
        widths = [w for w in self.profile.widths if 1 + fixed + n < w <= 1 + fixed + 2 * n]
        now = cost(1 + fixed + n)
        cheaper = [w for w in widths if cost(w) <= now]
        return cheaper[-1] - 1 - fixed if cheaper else 0

    def update(self, tree: DraftTree, path: list[int]) -> None:
        """After verifying `tree` (the part of the last `plan`'s proposal that was verified)."""
        self._calibrate(tree, path, self.proposed)
        self.estimate.update(tree, path, self.proposed)
