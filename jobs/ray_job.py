"""Ray Jobs entry point: the nightly run submitted to an existing cluster.

    ray job submit --address http://head:8265 --working-dir . -- \
        python jobs/ray_job.py run --date 2026-11-21 --config /etc/adfactory/night.toml --output s3://ads/nightly

Arguments are those of `adfactory`; `ray job submit` sets RAY_ADDRESS, so the run joins the cluster instead of
starting a local one. `--working-dir .` uploads the repository (without .gitignore'd files: models, outputs, .venv)
to a temporary directory on the head node that Ray deletes later. So under a Ray job:
  - the output root must be a URI (`s3://...`) or an absolute path on storage every node shares: a relative one
    (or a config default such as `data/output`) would land in that temporary directory and vanish;
  - model paths must exist: relative ones resolve inside the upload, where gitignored weights are not.
Both are refused up front with one sentence and exit code 2, before anything is read or written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# `python jobs/ray_job.py` puts jobs/ first on sys.path: the repository root (the job's uploaded working directory)
# must come next, so the uploaded `factory` package is the one that runs, on the driver as on the workers.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))


def ray_job_id(environ: dict[str, str] | None = None) -> str | None:
    """The submission id when this process is a Ray job's entrypoint, else None.

    The job supervisor gives the entrypoint `RAY_JOB_CONFIG_JSON_ENV_VAR` (its metadata holds the submission id);
    `RAY_JOB_ID` is an internal flag Ray strips from job environments, accepted too for other launchers.
    """
    env = os.environ if environ is None else environ
    raw = env.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        try:
            meta = json.loads(raw).get("metadata") or {}
        except (ValueError, AttributeError):
            meta = {}
        return str(meta.get("job_submission_id") or "ray-job")
    return env.get("RAY_JOB_ID") or None


def _is_uri(path: str) -> bool:
    return "://" in path


def path_problem(argv: list[str], workdir: Path) -> str | None:
    """Why the run's output or model paths cannot work under a Ray job started in `workdir`, else None."""
    from factory.config import load_config
    from factory.errors import FactoryError
    from factory.modes import NULL_PIPELINE

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("command", nargs="?")
    parser.add_argument("--output")
    parser.add_argument("--config")
    args, _ = parser.parse_known_args(argv)
    if args.command != "run":
        return None
    if args.output and not _is_uri(args.output) and not Path(args.output).expanduser().is_absolute():
        return (
            f"--output {args.output} is relative: under a Ray job it would land in the job's temporary working "
            "directory and vanish; give an absolute path on storage every node shares, or a URI such as s3://bucket/p"
        )
    try:
        cfg = load_config(args.config, {"paths": {"output": args.output}})
    except FactoryError:
        return None  # the CLI reports the config error itself
    out = cfg.paths.output
    if not _is_uri(out) and Path(out).resolve().is_relative_to(workdir.resolve()):
        return (
            f"paths.output {out} is inside the Ray job's temporary working directory and would vanish; set --output "
            "or [paths] output to an absolute path on storage every node shares, or a URI such as s3://bucket/p"
        )
    m = cfg.model
    if m.pipeline == NULL_PIPELINE:
        return None
    paths = {"model.pipeline": m.pipeline, "model.lora": m.lora, "model.clip_pretrained": m.clip_pretrained}
    paths["model.clip_config_dir"] = m.clip_config_dir
    for name, value in paths.items():
        if value and not _is_uri(value) and not Path(value).exists():
            return (
                f"{name} {value} does not exist in the Ray job's working directory (model weights are not uploaded "
                "with --working-dir); give an absolute path that exists on every node"
            )
    return None


def main(argv: list[str] | None = None) -> None:
    from factory.cli.app import main as cli_main
    from factory.errors import EXIT_BAD_INPUT

    argv = sys.argv[1:] if argv is None else argv
    if ray_job_id() is not None:
        problem = path_problem(argv, Path.cwd())
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT)

    sys.argv = [sys.argv[0], *argv]
    cli_main()


if __name__ == "__main__":
    main()
