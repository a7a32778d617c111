"""One place that turns "could not load a component" into a single clear line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.utils import logging as hf_logging


class ComponentError(RuntimeError):
    pass


def looks_local(name: str) -> bool:
    """A path, not a hub id: hub ids are `name` or `org/name`, never absolute, relative or deeper."""
    return name.startswith(("/", "./", "../", "~", ".\\", "\\")) or name.count("/") > 1 or Path(name).is_absolute() \
        or name in (".", "..")


def broken_file(where: str | Path) -> Path | None:
    """The first .json or .safetensors file at or under `where` (or beside it) that does not parse."""
    where = Path(where)
    candidates = [where] if where.is_file() else sorted(where.rglob("*")) if where.is_dir() else []
    if where.parent.is_dir():
        candidates += sorted(where.parent.glob("*"))
    for path in candidates:
        try:
            if path.suffix == ".json" and path.is_file():
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors" and path.is_file():
                with safe_open(str(path), framework="pt") as weights:
                    for key in weights.keys():  # the header parses; the data must be as long as it says
                        weights.get_slice(key)
        except (ValueError, SafetensorError, OSError):
            return path
    return None


@contextlib.contextmanager
def loading(what: str, name: str):
    """Wraps a from_pretrained call; an offline hub id or a bad path becomes one clear error.

    A name that looks like a local path but does not exist is reported as missing, never looked up
    on the hub; an unparsable JSON or safetensors file is named, with what to do."""
    if looks_local(str(name)) and not Path(name).expanduser().exists():
        raise ComponentError(f"cannot load {what}: {name} does not exist; check the path")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # load reports for frozen parts are noise to a user
    try:
        yield
    except (SafetensorError, json.JSONDecodeError) as err:
        bad = broken_file(name) or name
        kind = "weights file" if isinstance(err, SafetensorError) else "JSON file"
        raise ComponentError(f"cannot load {what}: {kind} {bad} is corrupt or truncated "
                             f"({str(err).splitlines()[0][:120]}); save or download it again") from None
    except (OSError, ValueError, EnvironmentError) as err:
        where = "local folder" if Path(name).exists() else "hub id (not a local path)"
        hint = ("it is not on this machine and the model hub could not be reached; download it first "
                f"(`hf download {name}`) or give a local path") if where.startswith("hub") else str(err).splitlines()[0]
        if not where.startswith("hub") and ("deserializ" in hint or "Expecting" in hint):
            bad = broken_file(name)
            hint = f"{bad} is corrupt or truncated; save or download it again" if bad else hint
        if Path(name).is_file() and str(name) in hint:  # the message names the file already
            raise ComponentError(f"cannot load {what}: {hint}") from None
        raise ComponentError(f"cannot load {what} from {where} {name!r}: {hint}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def check_complete(folder: str | Path, required: list[str]) -> None:
    """A model folder missing any of `required` (relative paths) was not saved completely."""
    folder = Path(folder)
    if not folder.exists():
        raise ComponentError(f"model folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise ComponentError(f"{folder} is a file; give the model folder (the one holding config.json)")
    missing = [name for name in required if not (folder / name).exists()]
    if missing:
        partial = folder.with_name(folder.name + ".partial")
        hint = f"; a save was interrupted ({partial} is left over): save it again" if partial.exists() else \
            "; was its save interrupted? save it again"
        raise ComponentError(f"{folder} is not a complete genllava model folder (missing {', '.join(missing)}){hint}")


def resolve(name: str) -> str:
    """Local paths become absolute (so a saved config still finds them); hub ids stay as they are."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
