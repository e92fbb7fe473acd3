"""User-facing errors. Each carries one clear sentence and the process exit code the CLI uses."""

from __future__ import annotations

EXIT_FAILED = 1  # the run itself failed (a bug, a crashed cluster, a model that won't load)
EXIT_BAD_INPUT = 2  # bad input or config: fix the file named in the message and rerun
EXIT_LOCKED = 3  # another run holds the lock for this date and output root
EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15, as a shell reports it): a crash that released the lock


class FactoryError(Exception):
    """An error whose message is meant for the user, without a traceback."""

    exit_code = EXIT_FAILED


class InputError(FactoryError):
    """The day's SKU input cannot be used (missing, unreadable, wrong schema)."""

    exit_code = EXIT_BAD_INPUT


class TrainingDataError(InputError):
    """A training image folder (`adfactory train-lora --images`) holds no usable images or a bad file."""


class ConfigError(FactoryError):
    """A config or template file is invalid."""

    exit_code = EXIT_BAD_INPUT


class TemplateError(ConfigError):
    """A prompt-template file is invalid."""


class ModelError(FactoryError):
    """A model directory or checkpoint cannot be loaded."""


class StorageError(FactoryError):
    """The output store failed or cannot be reached (network, server error): the night failed, a rerun repairs it."""


class EnvironmentFault(StorageError):
    """The night's environment failed, not a SKU: the output is full, read-only, failing I/O or refusing
    permission, or the object store cannot be reached (after retries) or refuses the credentials. The night
    stops (no new batches, no SKU blamed, exit 1); fixing the environment and rerunning repairs it
    (factory.io.faults classifies)."""


class LockError(FactoryError):
    """Another live run holds the lock for this date and output root."""

    exit_code = EXIT_LOCKED


class ModelInputError(ModelError):
    """A model directory or LoRA given to `adfactory models check` cannot be used (bad input, not a failed run)."""

    exit_code = EXIT_BAD_INPUT


class Terminated(BaseException):
    """The process got SIGTERM (cron timeout, Kubernetes eviction): unwinds like a crash, releasing the lock.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` (a batch's error isolation, a model
    load's error wrapping) takes it for a failure to record and carry on from."""

    exit_code = EXIT_TERMINATED
