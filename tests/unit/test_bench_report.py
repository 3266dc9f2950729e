"""Pure parts of ``make bench``: the profile summary read from py-spy's collapsed stacks."""

from __future__ import annotations

from trtllm_operator.localcluster.bench import profile_summary


def test_profile_summary_counts_self_and_inclusive_samples_once_per_stack() -> None:
    collapsed = "\n".join([
        "main (cli.py:1);loop (a.py:2);reconcile (c.py:3);validate (v.py:4) 30",
        "main (cli.py:1);loop (a.py:2);reconcile (c.py:3) 10",
        "main (cli.py:1);loop (a.py:2);recurse (r.py:5);recurse (r.py:5) 5",
        "not a stack line",
    ])
    rows = {fn: (own, total) for fn, own, total in profile_summary(collapsed, top=10)}
    assert rows["main (cli.py:1)"] == (0, 45)
    assert rows["reconcile (c.py:3)"] == (10, 40)
    assert rows["validate (v.py:4)"] == (30, 30)
    assert rows["recurse (r.py:5)"] == (5, 5)  # a recursing frame counts once per stack
    # Equal totals rank by name, whatever order the stacks came in.
    assert [fn for fn, _, _ in profile_summary(collapsed, top=3)] == [
        "loop (a.py:2)", "main (cli.py:1)", "reconcile (c.py:3)"]
