"""One error model for every job, and one rule mapping errors to exit codes.

Two kinds of expected failure, each a base class:

* :class:`UserError`: bad input (arguments, config, dataset, checkpoint, storage location).
  Found before anything is published; the message says what is wrong and what to do.
  **Exit code 2.**
* :class:`JobFailed`: the job started and failed part-way (a worker died for good, storage
  went away, training diverged). Finished work is kept; re-running the same command
  resumes. **Exit code 1.**

``ncsn_core``'s :class:`~ncsn_core.ConfigError` and :class:`~ncsn_core.CheckpointError` are
bad input too. Anything else that escapes a job is an unexpected failure: exit code 1,
printed as one line (set ``NCSN_DEBUG=1`` to see the traceback). Ctrl-C exits 130.

The class decides the code only until the job begins its work (the one exception is
:class:`DamagedInput`, content that no re-run can read, which exits 2 whenever it is found): each job calls
:func:`begin_work` once its checks have passed, just before it computes and writes its
outputs. From then on every failure, whatever its class (a store that goes away raises the
same :class:`~ncsn_ray.io.storage.StorageError` as a bad location does), exits 1 with
"re-run the same command to resume", because finished work is kept and a re-run resumes it.
:func:`run_job` applies the rule for every job, in one place.

Errors raised inside Ray tasks, actors and Train workers reach the driver wrapped
(``RayTaskError``, ``ActorDiedError``, Train's ``TrainingFailedError``, ...);
:func:`root_cause` finds the project's own error inside, so the same message and exit code
come out whether the error happened in the driver or on a worker.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = [
    "NcsnError",
    "UserError",
    "DamagedInput",
    "JobFailed",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "root_cause",
    "exit_code",
    "run_job",
    "begin_work",
    "preliminary_work",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class NcsnError(Exception):
    """Base of the project's expected errors; ``exit_code`` says how a job ends on it."""

    exit_code = EXIT_FAILED


class UserError(NcsnError):
    """Bad input, found before anything was published (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class DamagedInput(UserError):
    """An input whose content is unusable: bytes that do not decode (an image, a Parquet
    shard, a JSON file) or a file that contradicts its manifest. Reading it again gives the
    same answer, so it is bad input (exit code 2) whenever it is found, also after the work
    began: "re-run to resume" would be false advice. Nothing is published on it."""


class JobFailed(NcsnError):
    """The job failed part-way; finished work is kept and re-running resumes (exit code 1)."""

    exit_code = EXIT_FAILED


def _core_input_errors() -> tuple[type[BaseException], ...]:
    """``ncsn_core``'s bad-input errors; imported on use so that this module stays light
    (job scripts import it before torch, to answer ``--help`` and usage errors at once)."""
    from ncsn_core import CheckpointError, ConfigError

    return ConfigError, CheckpointError


def _inner(err: BaseException) -> list[BaseException]:
    """The exceptions ``err`` wraps, most direct first: Ray's ``.cause``, Ray Train's worker and
    controller failures, then Python's ``__cause__`` and ``__context__``."""
    inner: list[BaseException] = []
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        inner.append(cause)
    failures = getattr(err, "worker_failures", None)
    if isinstance(failures, dict):
        inner += [f for f in failures.values() if isinstance(f, BaseException)]
    controller = getattr(err, "controller_failure", None)
    if isinstance(controller, BaseException):
        inner.append(controller)
    if err.__cause__ is not None:
        inner.append(err.__cause__)
    if err.__context__ is not None and not err.__suppress_context__:
        inner.append(err.__context__)
    return inner


def root_cause(err: BaseException) -> BaseException:
    """The project error (or core config/checkpoint error) inside ``err``; when there is
    none, the innermost exception along the most direct chain (the original failure).

    Follows Ray's wrappers (``.cause`` of ``RayTaskError``/``RayActorError``, the
    ``worker_failures`` / ``controller_failure`` of Ray Train's errors) and Python's
    ``__cause__`` / ``__context__`` chains.
    """
    ours = (NcsnError, *_core_input_errors())
    seen: set[int] = set()
    stack = [err]
    while stack:  # anywhere inside: one of ours?
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ours):
            # Ray's RayTaskError(X) is also an X: prefer the original X in its ``.cause``.
            while isinstance(getattr(current, "cause", None), ours) and current.cause is not current:
                current = current.cause
            return current
        stack.extend(reversed(_inner(current)))
    current, seen = err, {id(err)}
    while True:  # none: follow the most direct chain to its end
        inner = [e for e in _inner(current) if id(e) not in seen]
        if not inner:
            return current
        current = inner[0]
        seen.add(id(current))


def exit_code(err: BaseException) -> int:
    """The exit code for an error that ended a job (see the module docstring)."""
    cause = root_cause(err)
    if isinstance(cause, (UserError, *_core_input_errors())):
        return EXIT_BAD_INPUT
    if isinstance(cause, NcsnError):
        return cause.exit_code
    return EXIT_FAILED


_work_begun = False  # set by begin_work(), reset by run_job()


def begin_work() -> None:
    """Mark that the running job has passed its checks and begins its work (see the module
    docstring): from here on, a failure exits 1 and says that re-running resumes."""
    global _work_begun
    _work_begun = True


@contextmanager
def preliminary_work() -> Iterator[None]:
    """Run a piece of work that a job does before its own checks are finished (training's
    automatic data preparation): a failure inside it exits 1 like any work that has begun,
    but once it has finished the job's remaining checks are input checks again (exit 2)."""
    global _work_begun
    before = _work_begun
    yield
    _work_begun = before


def _one_line(err: BaseException) -> str:
    """``err``'s message without the retry advice Ray Data appends on new lines to an
    exception raised in a task ("Failed to ... after 1/1 attempts ...")."""
    text = str(err).strip()
    text = re.split(r"\nFailed to .* after \d+/\d+ attempts", text, maxsplit=1)[0].strip()
    return text if text else type(err).__name__


def run_job(job: str, body: Callable[[], Any], *, json_summary: bool = False) -> int:
    """Run a job's body and turn its outcome into an exit code, the same way for every job.

    ``body`` returns a summary (a JSON-serialisable dict, or None); with ``json_summary``
    it is printed as the last line. Errors are printed to stderr as ``error: <message>``
    with no traceback (``NCSN_DEBUG=1`` adds it); see the module docstring for the codes.
    """
    global _work_begun
    _work_begun = False
    try:
        summary = body()
    except KeyboardInterrupt:
        print(f"{job}: interrupted; re-run the same command to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - every failure becomes one line and an exit code
        cause = root_cause(err)
        damaged = isinstance(cause, DamagedInput)
        code = EXIT_FAILED if _work_begun and not damaged else exit_code(err)
        if os.environ.get("NCSN_DEBUG"):
            traceback.print_exception(err)
        if isinstance(cause, (NcsnError, *_core_input_errors())):
            message = _one_line(cause)
            if _work_begun and not damaged and "re-run" not in message:
                message += f" (the {job} job had begun; finished work is kept, re-run the same command to resume)"
        else:
            message = (
                f"the {job} job failed ({type(cause).__name__}: {_one_line(cause).splitlines()[-1]}). "
                "Finished work is kept; re-run the same command to resume (NCSN_DEBUG=1 shows the traceback)"
            )
        print(f"error: {message}", file=sys.stderr, flush=True)
        return code
    if json_summary and summary is not None:
        import json

        print(json.dumps(summary), flush=True)
    return EXIT_OK
