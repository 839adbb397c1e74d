"""A simulated clock for engines whose decisions read times (cost-aware verification): a test's verdict must not
depend on how loaded the machine is.

    clock = ProfileClock(profile).attach(engine)

From then on the engine's clock advances only by what `profile` says each of its target forwards costs (by the
forward's width, at the profile's first context length), and by `drafting` plain steps for each row's proposal
(drafting is never free: a drafter whose drafts are all cut must not look as if it paid); bookkeeping takes no time.
The cost-aware gate then sees exactly the costs the profile promised, on any machine. Each advance is rounded to a
multiple of 2^-20 s, so sums and differences of them are exact (a profile whose seconds are such multiples, as the
tests' are, is then read back to the last bit).
"""
from __future__ import annotations


def exact(seconds: float) -> float:
    return round(seconds * 2 ** 20) / 2 ** 20


class ProfileClock:
    def __init__(self, profile, drafting: float = 0.125):
        self.profile = profile
        self.drafting = exact(drafting * profile.seconds[0][0])
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def forward_seconds(self, width: int) -> float:
        context = self.profile.context_lengths[0]
        return exact(self.profile.ratio(width, context) * self.profile.seconds[0][0])

    def attach(self, engine):
        forward = engine._forward

        def timed(cache, inputs, *args, **kwargs):
            self.now += self.forward_seconds(max(len(row) for row in inputs))
            return forward(cache, inputs, *args, **kwargs)

        propose = engine._propose

        def drafted(rows):
            trees, seconds = propose(rows)
            self.now += self.drafting * len(rows)
            return trees, [s + self.drafting for s in seconds]

        engine._forward, engine._propose = timed, drafted
        engine.time_source = self
        return engine
