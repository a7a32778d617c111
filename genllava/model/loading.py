"""One place that turns "could not load a component" into a single clear line."""

from __future__ import annotations

import contextlib
from pathlib import Path

from transformers.utils import logging as hf_logging


class ComponentError(RuntimeError):
    pass


@contextlib.contextmanager
def loading(what: str, name: str):
    """Wraps a from_pretrained call; an offline hub id or a bad path becomes one clear error."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # load reports for frozen parts are noise to a user
    try:
        yield
    except (OSError, ValueError, EnvironmentError) as err:
        where = "local folder" if Path(name).exists() else "hub id (not a local path)"
        hint = ("it is not on this machine and the model hub could not be reached; download it first "
                f"(`hf download {name}`) or give a local path") if where.startswith("hub") else str(err).splitlines()[0]
        raise ComponentError(f"cannot load {what} from {where} {name!r}: {hint}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def resolve(name: str) -> str:
    """Local paths become absolute (so a saved config still finds them); hub ids stay as they are."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
