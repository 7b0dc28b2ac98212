"""The local test cluster itself: token auth on, jobs submit with the token, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.http import http_status
from support.processes import cluster_processes
from support.ray_head import local_ray_head
from support.ray_jobs import job_output, job_succeeded, submit_job, unauthenticated_status

pytestmark = [pytest.mark.ray]


@pytest.mark.timeout(300)
def test_head_with_token_auth_runs_jobs_and_cleans_up(tmp_path):
    workdir = tmp_path / "job"
    (workdir / "runs").mkdir(parents=True)
    (workdir / "runs" / "big.bin").write_bytes(b"x" * 1024)
    (workdir / "check.py").write_text(
        "import os, ray\n"
        "ray.init()\n"
        "print('CPUS', ray.cluster_resources().get('CPU'))\n"
        "print('ENDPOINT', os.environ.get('AWS_ENDPOINT_URL'))\n"
        "print('NODE_ENV', os.environ.get('NODE_LEVEL_VAR'))\n"
        "print('RUNS_UPLOADED', os.path.exists('runs'))\n"
        "print('TOKEN_IN_ENV', 'RAY_AUTH_TOKEN' in os.environ)\n"
    )
    with local_ray_head(tmp_path=tmp_path / "head", env={"NODE_LEVEL_VAR": "from-ray-start"}) as head:
        tag = head.tag
        assert head.address.startswith("127.0.0.1:")
        assert head.dashboard_url.startswith("http://127.0.0.1:")
        assert set(head.env) == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
        assert oct(os.stat(head.token_path).st_mode & 0o777) == "0o600"
        assert cluster_processes(tag), "the cluster's processes carry the marker"

        # Refused without a token (401) and with a wrong one (403); accepted with it.
        assert unauthenticated_status(head) in (401, 403)
        assert unauthenticated_status(head) == 401
        wrong = {"Authorization": "Bearer " + "0" * 64}
        assert http_status(head.dashboard_url + "/api/jobs/", headers=wrong) == 403
        assert http_status(head.dashboard_url + "/api/jobs/", headers=head.auth_headers()) == 200

        # The trivial job from the brief, with auth.
        result = submit_job(
            head,
            ["python", "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
            working_dir=workdir,
            timeout=180,
        )
        assert job_succeeded(result), job_output(result)
        assert "'CPU': 2.0" in result.stdout, job_output(result)

        # runtime_env env_vars and ray start's env both reach the driver; runs/ is not uploaded.
        result = submit_job(
            head,
            ["python", "check.py"],
            working_dir=workdir,
            env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
            timeout=180,
        )
        assert job_succeeded(result), job_output(result)
        out = result.stdout
        assert "CPUS 2.0" in out, job_output(result)
        assert "ENDPOINT http://127.0.0.1:9" in out, job_output(result)
        assert "NODE_ENV from-ray-start" in out, job_output(result)
        assert "RUNS_UPLOADED False" in out, job_output(result)
        assert "TOKEN_IN_ENV False" in out, job_output(result)
        token = head.token_path.read_text().strip()
        assert token not in out and token not in result.stderr

        # A failing job is reported as failed.
        failed = submit_job(head, ["python", "-c", "raise SystemExit(3)"], working_dir=workdir, timeout=180)
        assert failed.returncode != 0 and not job_succeeded(failed), job_output(failed)
        dashboard_url = head.dashboard_url

    assert cluster_processes(tag) == []
    assert http_status(dashboard_url + "/api/jobs/") == 0, "the dashboard still answers"
    assert not Path(head.temp_dir).exists()


@pytest.mark.timeout(120)
def test_head_is_stopped_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with local_ray_head(tmp_path=tmp_path, num_cpus=1) as head:
            tag = head.tag
            raise RuntimeError("boom")
    assert cluster_processes(tag) == []
    assert http_status(head.dashboard_url + "/api/jobs/") == 0
