"""Ray Jobs entry point: submit the nightly run to an existing cluster (RAY_ADDRESS is set by `ray job submit`).

    ray job submit --address http://head:8265 --working-dir . -- python jobs/ray_job.py run --date 2026-11-21

Arguments are those of `adfactory`; the run joins the cluster instead of starting a local one.
"""

from factory.cli import main

if __name__ == "__main__":
    main()
