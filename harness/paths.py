"""Safe file names and output paths.

Model, judge, task and label names chosen by the user end up in file names (``harness export``,
``harness rerank``). :func:`check_name` refuses any name that could leave the output folder or
hide a file, and :func:`safe_join` checks that a path built under an output folder stays in it,
following symbolic links.

:func:`make_temp_file` and :func:`make_temp_dir` are ``tempfile.mkstemp``/``mkdtemp`` without
their private modes: the kernel applies the umask (and a default ACL) exactly as it does to
any file or folder the user creates, so a result written through a temp file and a rename is as
readable as one written in place. :func:`rename_exchange` swaps two paths in one step, for
outputs published as whole folders (reports, trained models).
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

#: characters allowed in a name: ASCII letters and digits, and ``. _ - @ + = [ ]``
#: (``[`` and ``]`` because best-of-n models are named ``<model>@bo<n>[<scorer>]``)
NAME_CHARS = "A-Za-z0-9._@+=\\[\\]-"
NAME_MAX = 200  # bytes: room for suffixes like "_single.jsonl" within the usual 255-byte file name limit
_BAD_CHAR = re.compile(f"[^{NAME_CHARS}]")


def check_name(name: str, where: str) -> str:
    """Return ``name`` if it is safe as one file name component, else raise ``ValueError``.

    Allowed: 1 to 200 ASCII letters, digits and ``. _ - @ + = [ ]``, not starting with ``.`` or
    ``-``. So no path separators, no NUL, no spaces or other whitespace, no ``.``/``..``, no hidden
    files and nothing a command line would read as an option. ``where`` (e.g. ``"models[2].name"``,
    ``"--label"``) names the setting in the error message.
    """
    if not isinstance(name, str):
        raise ValueError(f"{where}: a name must be a string, got {type(name).__name__} {name!r}")
    if not name:
        raise ValueError(f"{where}: the name is empty")
    if name in (".", ".."):
        raise ValueError(f"{where}: {name!r} is not a valid name")
    bad = _BAD_CHAR.search(name)
    if bad:
        ch = bad.group()
        what = {"/": "a path separator '/'", "\\": "a path separator '\\'", "\0": "a NUL character"}.get(
            ch, "whitespace" if ch.isspace() else repr(ch))
        raise ValueError(f"{where}: name {name!r} contains {what}; names may use only ASCII letters, digits "
                         f"and . _ - @ + = [ ]")
    if name[0] in ".-":
        raise ValueError(f"{where}: name {name!r} must not start with {name[0]!r}")
    if len(name) > NAME_MAX:
        raise ValueError(f"{where}: name {name[:40]!r}... is {len(name)} characters long (at most {NAME_MAX})")
    return name


def safe_join(root: str | Path, *parts: str | Path) -> Path:
    """``root / part / ...``, resolved (symbolic links followed); ``ValueError`` unless it lies below
    ``root`` (itself resolved). Absolute parts, ``..`` and links that point out of ``root`` are refused.
    With no parts, the resolved ``root``."""
    base = Path(root).resolve()
    if not parts:
        return base
    try:
        path = Path(root).joinpath(*parts).resolve()
    except (ValueError, OSError) as e:  # e.g. an embedded NUL, a symlink loop
        raise ValueError(f"{root}: invalid path {'/'.join(map(str, parts))!r}: {e}") from None
    if base not in path.parents:
        raise ValueError(f"{root}: path {'/'.join(map(str, parts))!r} leads outside the output folder "
                         f"(to {path})")
    return path


TEMP_TOKEN_CHARS = 12  # hex characters of the random part of a temp name


def _temp_name(dir: Path, prefix: str, suffix: str) -> Path:
    return Path(dir) / f"{prefix}{secrets.token_hex(TEMP_TOKEN_CHARS // 2)}{suffix}"


def make_temp_file(dir: str | Path, prefix: str = "tmp", suffix: str = "") -> tuple[int, str]:
    """Like ``tempfile.mkstemp`` (a new file, opened for writing, exclusive), but created with mode
    0o666 less the umask instead of 0o600. Returns (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = _temp_name(Path(dir), prefix, suffix)
        try:
            return os.open(path, flags, 0o666), str(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"{dir}: no free temporary file name with prefix {prefix!r}")


def make_temp_dir(dir: str | Path, prefix: str = "tmp", suffix: str = "") -> Path:
    """Like ``tempfile.mkdtemp``, but created with mode 0o777 less the umask instead of 0o700."""
    for _ in range(100):
        path = _temp_name(Path(dir), prefix, suffix)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{dir}: no free temporary folder name with prefix {prefix!r}")

@contextmanager
def staged(target: Path, is_dir: bool = False):
    """Yield a temp path beside ``target`` (a file, or a folder with ``is_dir``); on success it
    replaces ``target`` by a rename. A failure removes the temp path and a kill can leave only a
    dot-named temp beside it, so ``target`` is never half-written. Modes follow the umask."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    if is_dir:
        tmp = make_temp_dir(target.parent, prefix=prefix)
    else:
        fd, name = make_temp_file(target.parent, prefix=prefix, suffix=".part")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)



_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "ppc64le": 357,
                  "s390x": 347, "i686": 353, "i386": 353}


def rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(..., RENAME_EXCHANGE)``); False where the system or the
    file system cannot."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    args = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(*args)
    else:
        nr = _SYS_RENAMEAT2.get(platform.machine().lower())
        if nr is None:
            return False
        rc = libc.syscall(ctypes.c_long(nr), ctypes.c_int(args[0]), ctypes.c_char_p(args[1]),
                          ctypes.c_int(args[2]), ctypes.c_char_p(args[3]), ctypes.c_uint(args[4]))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False
    raise OSError(err, os.strerror(err), str(b))
