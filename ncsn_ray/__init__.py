"""The distributed side of NCSN-on-Ray: storage, datasets, Ray Train and Ray Data jobs.

``ncsn_core`` is the pure-PyTorch method; this package wires it to object storage and Ray.
The scripts in ``jobs/`` are thin command-line entry points over these modules.
"""
