"""Atomic writes and trust-free loading.

Every file kdistill writes goes to a temporary file in the same directory first and is renamed into
place, so an interrupted run never leaves a half-written checkpoint or summary behind.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than two calls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that ``dst`` is either the old file or the complete new one."""
    _atomic(Path(dst), lambda f: f.write(Path(src).read_bytes()))


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot, and nothing was changed."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished directory ``tmp`` where ``out`` is, replacing an earlier ``out`` atomically: a reader or an
    interruption sees the old directory or the new one, never a mixture or nothing. Where the system cannot swap
    two directories in one step, two renames are used and an interruption between them leaves the old one
    under ``.<name>.*.old/`` beside ``out``."""
    mask = umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700 (and safetensors 0600): give ordinary permissions
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~mask)
    if out.exists() and exchange_paths(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        return
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or holds something other than tensors and plain data."""


# Globals a weights-only checkpoint may name (tensor rebuilding, storages, ordered dicts): anything else in a
# pickle is code that unpickling would run.
_PLAIN_GLOBALS = re.compile(
    r"^(torch\._utils\._rebuild_\w+|torch\._tensor\._rebuild_\w+|torch\.\w*Storage|torch\.storage\.\w+"
    r"|torch\.(float|int|uint|bool|bfloat|complex)\d*|torch\.(Size|device)|collections\.OrderedDict"
    r"|_codecs\.encode|builtins\.(set|frozenset|slice|bytearray))$"
)


def pickled_globals(path: str | Path) -> list[str]:
    """The ``module.name`` of every class or function a pickle (or a ``torch.save`` zip) refers to, read from its
    opcodes with :mod:`pickletools`, which never runs them; those a plain checkpoint may hold are left out.
    ``[]`` when the file cannot be read as a pickle (it is then corrupt, not unsafe)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(member) if member else b""
        else:
            data = path.read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a truncated or foreign file: not a pickle we can read
        return []
    # protocol 2 (torch.save's) spells Python 3's builtins as __builtin__
    names = [f"builtins.{n.split('.', 1)[1]}" if n.startswith("__builtin__.") else n for n in names]
    return sorted({n for n in names if not _PLAIN_GLOBALS.match(n)})


def safe_load(path: str | Path) -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    A file that needs arbitrary pickled classes is refused instead of executed, with a message that names them
    and says how to convert a file you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = pickled_globals(path)
        if not unsafe:
            # torch's message is several lines with ANSI colour codes; the first one says what failed.
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {text.splitlines()[0]}") from None
        raise CheckpointError(
            f"checkpoint {path} holds pickled objects ({', '.join(unsafe)}), not just tensors: loading it would run "
            "their code, and kdistill will not execute code from a file. If you trust the file, convert it once to "
            f"a plain state_dict: python -c \"import torch; m = torch.load('{path}', weights_only=False); "
            "torch.save(m.state_dict() if hasattr(m, 'state_dict') else m, 'weights.pt')\""
        ) from None
    except Exception as e:  # noqa: BLE001 - torch's legacy unpickler raises KeyError, ValueError, ...
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {type(e).__name__}: {e}") from None
