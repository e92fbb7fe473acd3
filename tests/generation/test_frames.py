"""The worker generates to tensors (`output_type="pt"`) and converts to uint8 once: the same pixels as diffusers'
`output_type="pil"`, the device tensor aligned with the host images."""

import numpy as np
import torch

from factory.job.night_plan import local_worker
from tests.generation.test_worker import batch, tasks_for


def test_tensor_output_gives_the_pil_output_s_pixels(cfg, tmp_path):
    worker = local_worker(cfg, str(tmp_path))
    for bucket in ("small", "poster"):
        tasks = tasks_for(3, bucket)
        frames = worker.generate_frames(batch(tasks), pad_to=3)
        with torch.inference_mode(), worker._numerics():
            ref = worker.pipe(
                prompt=[t.prompt for t in tasks],
                negative_prompt=[t.negative_prompt for t in tasks],
                width=tasks[0].width,
                height=tasks[0].height,
                num_inference_steps=tasks[0].steps,
                guidance_scale=cfg.model.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(t.seed) for t in tasks],
                output_type="pil",
            ).images
        assert frames.pixels is not None and frames.pixels.dtype == torch.uint8
        assert frames.pixels.shape == (3, tasks[0].height, tasks[0].width, 3)
        for im, row, r in zip(frames.images, frames.pixels, ref):
            assert np.array_equal(np.asarray(im), np.asarray(r))  # bit-identical to diffusers' own uint8 rounding
            assert np.array_equal(row.numpy(), np.asarray(r))


def test_halves_join_and_mixed_sizes_drop_the_tensor(cfg, tmp_path):
    worker = local_worker(cfg, str(tmp_path))
    a = worker.generate_frames(batch(tasks_for(2, "small")), pad_to=2)
    b = worker.generate_frames(batch(tasks_for(1, "medium")), pad_to=1)
    joined = a + a
    assert joined.pixels.shape[0] == 4 and len(joined.images) == 4
    mixed = a + b
    assert mixed.pixels is None and len(mixed.images) == 3  # scored from the host images, per size
