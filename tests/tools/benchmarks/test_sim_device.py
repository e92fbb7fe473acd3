"""The simulated device: a GIL-free wait of the measured generator time, deterministic pseudo-images."""

import threading
import time

import numpy as np
import torch

from factory.tools.benchmarks.sim_device import SimulatedPipeline, pseudo_image


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
