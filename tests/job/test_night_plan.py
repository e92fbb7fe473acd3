"""`validate`'s summary (counts from a streamed day) agrees with the plan a run executes."""

from collections import Counter

from factory.inputs.bucketing import make_batches
from factory.job.night_plan import plan, summarize
from tests.conftest import DATE, with_run


def test_summary_matches_the_plan(cfg, day_file):
    for padding in ("none", "size"):
        c = with_run(cfg, batch_size=2, padding=padding)
        p, s = plan(c, DATE), summarize(c, DATE)
        assert s.input_rows == p.input_rows == 12 and s.images == len(p.tasks) == 9
        assert s.buckets == Counter(t.bucket for t in p.tasks)
        assert s.batches == len(make_batches(p.tasks, 2, c.planner.buckets, padding))
        assert s.rejected == p.rejected and len(s.rejected) == 4
        assert set(p.timings) == {"read_s", "plan_s"}
