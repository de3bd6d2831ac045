"""Installed into a lean lab host's own layer (``Costs.compiled``): the host's Python keeps the code it compiles.

mitogen sends its own and Ansible's modules to a host as source, and the host's interpreter compiles them in every
run: about a third of its CPU (docs/benchmarks.md). A real host spends that on its own cores; a lab host spends it
on the bastion's, which the test suite shares. Here ``compile`` as mitogen calls it (``flags=0, dont_inherit=True``)
keeps each result under a hash of what was compiled, in a directory of the user's own that the lab made for it;
every other call, and every miss, is Python's own compile. The hash leaves out the file's name, which is set on the
code read back: plain Ansible's modules (molecule, a run without the controller) import Ansible's module_utils
from a zip in a new temporary directory each time, so a name in the hash would miss in every task.

This file runs on the host, without the lab or the controller package: it keeps its entries itself, as the
controller's Kept does on the bastion. It imports only what every interpreter has loaded already or builds in (not
typing, hashlib or importlib.util): a login user's interpreter that only relays root's would load them for this
file alone.
"""

import __future__

import _frozen_importlib_external
import builtins
import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DIRECTORY = "/var/cache/lab-compiled"  # one directory per uid below, made by the lab: the user's own, 0700
_compile = builtins.compile
# no future import here: a caller's, which the builtin would take from its caller's frame, is taken from the frame
# that called this compile (its flags are the same bits as the code's)
_FUTURES = 0
for _name in __future__.all_feature_names:
    _FUTURES |= getattr(__future__, _name).compiler_flag


def _own_directory() -> str | None:
    path = os.path.join(DIRECTORY, str(os.getuid()))
    try:
        meta = os.stat(path)
    except OSError:
        return None
    # one that another user owns or may write to could hold code planted for this one: not used
    if meta.st_uid != os.getuid() or meta.st_mode & 0o077:
        return None
    return path


_CODE = type(_own_directory.__code__)  # types.CodeType, without importing types


def _named(code: "Any", filename: str) -> "Any":
    """``code`` and every function and class body in it, as compiled from ``filename``."""
    consts = tuple(_named(const, filename) if isinstance(const, _CODE) else const for const in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def compile(source: "Any", filename: "Any", mode: str, flags: int = 0, dont_inherit: bool = False,
            optimize: int = -1, **more: "Any") -> "Any":
    """Python's ``compile``, read back from the user's directory when the same source was compiled before."""
    if not dont_inherit:  # what the caller's future imports add, as the builtin would take them from its caller
        flags |= sys._getframe(1).f_code.co_flags & _FUTURES
    directory = None if flags or more or optimize != -1 or not isinstance(source, (str, bytes)) else _own_directory()
    if directory is None:
        return _compile(source, filename, mode, flags, True, optimize, **more)
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # 3.11: hashlib would load OpenSSL
    except ImportError:
        from hashlib import sha256

    text = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    key = sha256(b"\0".join((_frozen_importlib_external.MAGIC_NUMBER, mode.encode(), type(source).__name__.encode(),
                             text))).hexdigest()
    path = os.path.join(directory, key)
    try:
        with open(path, "rb") as kept:
            code = marshal.loads(kept.read())
    except (OSError, ValueError, EOFError, TypeError):
        code = None  # not there yet, or damaged: compiled and written again
    if isinstance(code, _CODE):
        name = os.fsdecode(filename)
        return code if code.co_filename == name else _named(code, name)
    code = _compile(source, filename, mode, 0, True)
    partial = f"{path}.{os.getpid()}"
    try:
        with open(partial, "wb") as kept:
            kept.write(marshal.dumps(code))
        os.replace(partial, path)  # whole or not at all, for the host's other interpreters
    except OSError:
        pass
    return code


if __name__ == "_lab_compiled":  # as the host's .pth imports it; the lab itself only reads DIRECTORY
    builtins.compile = compile
