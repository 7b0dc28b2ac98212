"""Hooks the reliability tests drive from outside the product's options (see :mod:`.faults`)."""
