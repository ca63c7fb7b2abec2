"""``histoguard demo``: the whole current pipeline, offline, on real data when given."""
