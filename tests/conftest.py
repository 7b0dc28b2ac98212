"""Shared fixtures: a real S3 API on loopback (moto's ThreadedMotoServer), an embedded Ray
instance per test module, a prepared digits dataset, Inception weights made in the test.

The S3 server listens on 127.0.0.1 with an OS-chosen port. Tests get fake credentials
through the standard AWS environment variables only (the way users' credentials arrive),
and the endpoint through ``AWS_ENDPOINT_URL`` for subprocesses or ``endpoint_url=``
in-process. Helpers that are not fixtures live in the ``support`` package beside this file.
"""

from __future__ import annotations

import os
import uuid

import pytest

# Hypothesis (tests/test_fuzz_inputs.py): CI draws the same cases on every run and keeps no
# example database in the checkout; HYPOTHESIS_PROFILE=explore draws new ones each run.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    _hypothesis_settings.register_profile("explore", derandomize=False, database=None)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server():
    """``{"endpoint": "http://127.0.0.1:PORT", "env": {...}}`` for a moto server shared by the session."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield {"endpoint": endpoint, "env": {**FAKE_AWS_ENV, "AWS_ENDPOINT_URL": endpoint}}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _new_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; returns ``(bucket_name, endpoint)``."""
    return _new_bucket(s3_server["endpoint"]), s3_server["endpoint"]


@pytest.fixture(scope="module")
def module_bucket(s3_server):
    """One bucket shared by a test module's tests (each writes under its own prefix)."""
    return _new_bucket(s3_server["endpoint"]), s3_server["endpoint"]


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray instance for a test module: 2 CPUs, a small object store, the
    dashboard on (as the jobs start it). Ray waits a fixed 30 s for its raylet to register;
    on a heavily loaded machine that can run out, so start-up is tried a second time."""
    import ray

    from ncsn_ray.cluster import init_ray

    try:
        started = init_ray(num_cpus=2, object_store_memory=150_000_000, log=lambda *a: None)
    except Exception as err:  # "The current node timed out during startup ..."
        if "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        started = init_ray(num_cpus=2, object_store_memory=150_000_000, log=lambda *a: None)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def digits_local(tmp_path_factory):
    """scikit-learn's digits prepared once per session into a local folder (a real dataset)."""
    from ncsn_ray.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "digits"
    prepare_dataset("digits", str(out), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def inception_weights_file(tmp_path_factory):
    """Random InceptionV3 weights in torch-fidelity's state_dict format
    (:func:`ncsn_ray.testing.inception.random_inception_weights`): the real weights cannot be
    downloaded here, so scores made with them only prove the plumbing."""
    from ncsn_ray.testing.inception import random_inception_weights

    return random_inception_weights(tmp_path_factory.mktemp("inception"))
