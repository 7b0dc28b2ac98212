"""The command lines of the jobs: one module per job, each with ``build_parser()`` and ``main(argv) -> exit status``.

Every job runs the same code three ways: as an installed command (``ncsn-train``, the
``[project.scripts]`` of pyproject.toml), as ``python jobs/train.py`` from a checkout (a
four-line launcher), and as ``ray job submit -- python jobs/train.py`` (the launcher on the
cluster). :data:`COMMANDS` maps each job module to its command name.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["COMMANDS", "job_parser", "program_name"]

COMMANDS = {
    "prepare_data": "ncsn-prepare",
    "train": "ncsn-train",
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
