"""The 0/1/2 exit-code contract is decided by *when* a failure happens, checked in-process
through :func:`ncsn_ray.errors.run_job`, the one function every job's command line uses."""

from __future__ import annotations

import pytest

from ncsn_ray.errors import (
    EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, JobFailed, UserError, begin_work, preliminary_work, run_job,
)


def _fail(error: Exception):
    raise error


def test_bad_input_before_the_work_begins_exits_2_and_after_it_exits_1(capsys):
    assert run_job("demo", lambda: _fail(UserError("bad --steps"))) == EXIT_BAD_INPUT

    def fails_mid_run():
        begin_work()
        raise UserError("s3://b/run: storage is not writable")

    assert run_job("demo", fails_mid_run) == EXIT_FAILED
    assert "re-run the same command to resume" in capsys.readouterr().err
    # the flag belongs to one run_job call: the next job starts in its checks again
    assert run_job("demo", lambda: _fail(UserError("bad --n"))) == EXIT_BAD_INPUT
    assert run_job("demo", lambda: {"ok": True}) == EXIT_OK


def test_preliminary_work_exits_1_while_it_runs_and_hands_back_to_the_checks_when_done(capsys):
    """Training prepares its default data set before its last checks: a failure while
    preparing is a job failure (re-run resumes the preparation), a bad batch size found
    after it is still bad input."""

    def fails_while_preparing():
        with preliminary_work():
            begin_work()  # what the preparation does inside
            raise JobFailed("store went away")

    assert run_job("train", fails_while_preparing) == EXIT_FAILED

    def fails_in_checks_after_preparing():
        with preliminary_work():
            begin_work()
        raise UserError("batch size 64 needs 64 images; the data has 10")

    assert run_job("train", fails_in_checks_after_preparing) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "batch size 64" in err and err.count("re-run") == 1


@pytest.mark.parametrize("error", [KeyError("x"), ValueError("y")])
def test_unexpected_errors_exit_1_with_one_line_and_no_traceback(error, capsys):
    assert run_job("demo", lambda: _fail(error)) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
