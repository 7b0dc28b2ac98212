"""Reading a bucket in tests, with boto3 against the loopback S3 server."""

from __future__ import annotations


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` (full keys, all pages of ``list_objects_v2``), sorted."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def read_objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """``{full key: bytes}`` under ``prefix``; an object deleted between listing and reading
    (a running job's probe or a file it replaced) is left out."""
    found = {}
    for key in list_keys(client, bucket, prefix):
        try:
            found[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            continue
    return found
