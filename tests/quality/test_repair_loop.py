"""The batched repair loop inside a worker: same bytes whatever the batch size, pixels outside the repair box
untouched, and one re-scoring pass per attempt."""

import dataclasses

import numpy as np

from factory.job.night_plan import local_worker
from tests.generation.test_worker import batch, tasks_for


def test_batched_repair_is_batch_size_invariant_and_local(cfg, tmp_path):
    # Every image is "blurry" (repairable) and nothing else fails: all three are repaired, twice.
    cfg = dataclasses.replace(
        cfg,
        quality=dataclasses.replace(cfg.quality, clip_threshold=-1.0, blur_laplacian_var=1e6),
        repair=dataclasses.replace(cfg.repair, max_attempts=2),
    )
    worker = local_worker(cfg, str(tmp_path))
    tasks = tasks_for(3)
    images = worker.generate(batch(tasks))
    assessments = worker.gate.assess(images, [t.prompt for t in tasks], [t.category for t in tasks])
    assert all(a.reasons == ["blurry"] for a in assessments)

    calls = []
    gate = worker.retry.gate

    class Counting:  # the real gate, counting the re-scoring passes the repair loop makes
        def assess(self, images, *rest):
            calls.append(len(images))
            return gate.assess(images, *rest)

    worker.retry.gate = Counting()
    together = worker.repair(tuple(tasks), images, assessments)
    assert calls == [3, 3]  # one pass over the whole repaired set per attempt
    calls.clear()
    alone = [worker.repair((t,), [im], [a])[0] for t, im, a in zip(tasks, images, assessments)]

    for original, a, b in zip(images, together, alone):
        assert a.attempts == 2 and a.image.tobytes() == b.image.tobytes()
        assert (a.repaired, a.repair_box, a.assessment.reasons) == (b.repaired, b.repair_box, b.assessment.reasons)
        before, after = np.asarray(original), np.asarray(a.image)
        outside = np.ones(before.shape[:2], dtype=bool)
        if a.repaired:
            x0, y0, x1, y1 = a.repair_box
            outside[y0:y1, x0:x1] = False
        assert np.array_equal(before[outside], after[outside])
    assert any(a.repaired for a in together) and calls == [1] * 6
