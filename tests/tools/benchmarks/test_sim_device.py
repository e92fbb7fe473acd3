"""The simulated device: a GIL-free wait of the measured generator time, deterministic pseudo-images."""

import threading
import time

import numpy as np
import torch
from PIL import Image

from factory.tools.benchmarks.sim_device import SimulatedPipeline, SimulatedRepairer, pseudo_image


def call(pipe, seeds, output_type="pil", size=64):
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(prompt=["p"] * len(seeds), width=size, height=size, generator=gens, output_type=output_type).images


def test_the_wait_is_the_measured_time_and_releases_the_gil():
    pipe = SimulatedPipeline(tokenizer=None, images_per_s=40.0)
    ticks, stop = [0], threading.Event()

    def spin():  # a Python thread that only makes progress while the GIL is free
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    t0 = time.perf_counter()
    images = call(pipe, range(8))
    elapsed = time.perf_counter() - t0
    stop.set()
    t.join()
    assert 0.2 <= elapsed < 0.6 and abs(pipe.busy_s - 0.2) < 1e-9 and pipe.calls == 1
    assert ticks[0] > 1000  # the other thread ran during the wait
    assert [im.size for im in images] == [(64, 64)] * 8


def test_pseudo_images_follow_the_seed_and_pt_matches_pil():
    pipe = SimulatedPipeline(tokenizer=None, images_per_s=1e6)
    a, b = call(pipe, [3, 4]), call(pipe, [3, 4])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
    pt = call(pipe, [3, 4], "pt")  # the pixels after the device's uint8 conversion (not charged to the host)
    assert pt.shape == (2, 64, 64, 3) and pt.dtype == torch.uint8
    assert np.array_equal(pt.numpy()[0], np.asarray(a[0]))
    assert pseudo_image(3, 96, 64).shape == (64, 96, 3) and np.asarray(a[0]).std() > 20  # not blank


def test_the_defect_share_is_a_fixed_share_of_seeds_and_defective_images_are_smooth():
    from factory.quality.pixels import pixel_metrics
    from factory.tools.benchmarks.sim_device import DEMO_REPAIR_SHARE, is_defective

    flags = [is_defective(s, DEMO_REPAIR_SHARE) for s in range(20_000)]
    assert abs(sum(flags) / len(flags) - DEMO_REPAIR_SHARE) < 0.01 and not is_defective(7, 0.0)
    lap = {d: pixel_metrics(Image.fromarray(pseudo_image(3, 512, 512, d)))["laplacian_var"] for d in (False, True)}
    assert lap[True] < 100 < lap[False]  # the factory's default blur threshold sends only the smooth one to repair


def test_the_simulated_inpaint_waits_its_device_time_and_paints_inside_the_mask_only():
    from factory.quality.repair import RepairItem

    pipe = SimulatedPipeline(tokenizer=None)
    repairer = SimulatedRepairer(pipe, call_s=0.05, image_s=0.02)
    image = Image.fromarray(pseudo_image(1, 64, 64, smooth=True))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 32, 32))
    items = [RepairItem(image, mask, "p", None, seed, 0) for seed in (5, 6)]
    t0 = time.perf_counter()
    out = repairer.repair_batch(items, 0.4, 4)
    assert time.perf_counter() - t0 >= 0.09 and abs(pipe.busy_s - 0.09) < 1e-9
    assert pipe.repair == {"calls": 1, "images": 2, "busy_s": pipe.busy_s}
    a, before = np.asarray(out[0]), np.asarray(image)
    outside = np.ones((64, 64), bool)
    outside[16:32, 16:32] = False
    assert np.array_equal(a[outside], before[outside]) and not np.array_equal(a[~outside], before[~outside])
    again = repairer.repair_batch(items, 0.4, 4)
    assert np.array_equal(np.asarray(again[0]), a) and not np.array_equal(np.asarray(out[1]), a)  # seeded
