"""faml_jax.compiled: a memo of compiled functions that gives up the least recently used first."""

from faml_jax.compiled import remembered


def test_the_least_recently_used_entry_is_given_up_first():
    """A sweep that keeps using its first configuration while building others (Table 6 over more
    configurations than are kept) keeps that one: the entry given up is the one unused longest."""
    memo, builds = {}, []

    def get(key):
        return remembered(memo, key, lambda: builds.append(key) or f"step {key}", max_kept=3)

    assert [get(k) for k in ("a", "b", "c")] == ["step a", "step b", "step c"]
    assert get("a") == "step a"  # used again: now the most recent
    get("d")  # a fourth: "b", unused longest, is given up
    assert list(memo) == ["c", "a", "d"]
    get("a")
    get("b")
    assert builds == ["a", "b", "c", "d", "b"]  # "a" built once, "b" again after it was given up
