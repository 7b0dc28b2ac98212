"""The command lines of the jobs: one module per job, each with ``build_parser()`` and ``main(argv) -> exit status``.

Every job runs the same code three ways: as an installed command (``ncsn-train``, the
``[project.scripts]`` of pyproject.toml), as ``python jobs/train.py`` from a checkout (a
four-line launcher), and as ``ray job submit -- python jobs/train.py`` (the launcher on the
cluster). :data:`COMMANDS` maps each job module to its command name.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

__all__ = ["COMMANDS", "PROGRESS", "job_main", "job_parser", "program_name", "storage_and_summary_flags"]

PROGRESS = functools.partial(print, flush=True)  # the jobs' log: each progress line as it happens

COMMANDS = {
    "prepare_data": "ncsn-prepare",
    "train": "ncsn-train",
    "distill": "ncsn-distill",
    "generate": "ncsn-generate",
    "evaluate": "ncsn-evaluate",
    "import_checkpoint": "ncsn-import",
    "export": "ncsn-export",
    "toy": "ncsn-toy",
    "tune_sampler": "ncsn-tune",
}


def program_name(job: str) -> str:
    """``ncsn-train`` when the installed command runs, else ``jobs/train.py`` (a checkout's launcher)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return COMMANDS[job] if invoked == COMMANDS[job] else f"jobs/{job}.py"


def job_parser(doc: str, job: str) -> argparse.ArgumentParser:
    """The parser of ``job`` from its module docstring: the first paragraph and usage lines are
    the description, the rest the epilog; usage lines name the program as it was invoked."""
    prog = program_name(job)
    head, tail = doc.replace(f"python jobs/{job}.py", prog if prog.startswith("ncsn-") else f"python {prog}").split("\n\n", 1)
    return argparse.ArgumentParser(prog=prog, description=head, epilog=tail,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def storage_and_summary_flags(parser: argparse.ArgumentParser, summary: str = "a JSON summary") -> None:
    """``--s3-endpoint URL`` and ``--json``, which every job that reads storage takes."""
    parser.add_argument("--s3-endpoint", default=None, metavar="URL",
                        help="S3-compatible endpoint URL (MinIO, Ceph, R2; default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--json", action="store_true", help=f"print {summary} as the last line")


def job_main(job: str | Callable[[argparse.Namespace], str],
             parse_args: Callable[[list[str] | None], argparse.Namespace],
             run: Callable[[argparse.Namespace], Any]) -> Callable[[list[str] | None], int]:
    """The ``main(argv) -> exit status`` of a job: parse ``argv``, then ``run(args)`` under
    :func:`~ncsn_ray.errors.run_job`'s exit-status rule (``job``: its name, or a function of
    the arguments that names it)."""
    from ..errors import run_job

    def main(argv: list[str] | None = None) -> int:
        args = parse_args(argv)
        name = job(args) if callable(job) else job
        return run_job(name, lambda: run(args), json_summary=args.json)

    return main
