"""The configs this project ships, as package data: ``--config digits`` names one of them.

Every job that takes ``--config`` accepts either a shipped config's name (``digits``,
``cifar10``, ``celeba-v2``, ...: the file names here without ``.yaml``) or the path of a
YAML file of the user's own. A name is looked up here first; anything else is a path.
"""

from __future__ import annotations

from pathlib import Path

from ncsn_core import ConfigError

__all__ = ["CONFIG_DIR", "shipped_names", "shipped_path", "resolve"]

CONFIG_DIR = Path(__file__).resolve().parent


def shipped_names() -> list[str]:
    """The names of the shipped configs, sorted (``["celeba", "celeba-v2", ...]``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def shipped_path(name: str) -> str:
    """The file of the shipped config ``name``; a clear :class:`ConfigError` naming the choices otherwise."""
    path = CONFIG_DIR / f"{name}.yaml"
    if name not in shipped_names():
        raise ConfigError(f"no shipped config named {name!r} (shipped: {', '.join(shipped_names())}; "
                          f"or give the path of a YAML file)")
    return str(path)


def resolve(reference: str | Path) -> str:
    """The file a ``--config`` value means: a shipped config's name, else the path as given.

    A value with no path separator and no ``.yaml``/``.yml`` suffix is a name; a name that is
    not shipped is an error listing the shipped ones (rather than "cannot read file digit").
    A path of the old layout, ``jobs/configs/<name>.yaml``, that does not exist resolves to
    the shipped config of that name, so commands written before configs became package data
    keep working.
    """
    text = str(reference)
    path = Path(text)
    if "/" not in text and path.suffix not in (".yaml", ".yml"):
        return shipped_path(text)
    if not path.exists() and path.parent.as_posix().endswith("jobs/configs") and path.stem in shipped_names():
        return shipped_path(path.stem)
    return text
