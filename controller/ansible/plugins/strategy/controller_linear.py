"""Ansible strategy: mitogen's linear strategy, with the CPU placement left to the kernel and the
work it does on unchanged sources remembered between runs.

On a machine with 2 or 3 cores mitogen pins the strategy process, every worker and the ssh
clients to one core; unpinned, the same check ran faster here (docs/benchmarks.md). The
controller uses this strategy by default and mitogen's own ``mitogen_linear`` with
``ansible.cpu_pinning: true``.

In every run mitogen's multiplexer compiles each module it scans for imports, minifies its own
modules and compresses each before sending them to the hosts: the same sources each time, about a
sixth of the bastion's CPU in a no-change check (docs/benchmarks.md). Where CONTROLLER_SOURCE_CACHE
names a directory (the controller sets it to one in its state dir), the results are kept there under
a hash of the source and read back in later runs. The cache only saves work: an entry that cannot
be read, or whose data no longer matches the hash it was written with, is a miss.

On a host reached as one user and become another, the login user's interpreter only relays the
root one's traffic: it is not prepared to run modules until a task asks to run there (Relays).

Before a copy or a template acts, Ansible stats the destination with the MIME type and the file
attributes that no builtin action reads; here it asks for neither, which spares the host a ``file`` and
an ``lsattr`` per task (_stat_for_actions). And ssh does not compress what mitogen has compressed already,
unless the inventory says ``mitogen_ssh_compression: true`` (_ssh_uncompressed).

Ansible forks a worker per task and host. Each shares the playbook process's memory until one of them writes to
a page, and a collection of the cyclic garbage collector writes to every object it walks: in a worker, to the
parent's objects its young generations still hold, and in the parent, after each fork, to its own. Before the
play the strategy moves every object there is to the collector's permanent generation (``gc.freeze``, as Python's
documentation advises before a fork without exec): a no-change check then costs the machine about 5% less CPU
(docs/benchmarks.md). What is frozen is never collected; a playbook process ends with its run.

Mitogen lists the collection directories in the worker of each task whose module comes from a collection, with
``ansible.collections.list``, which imports the galaxy CLI. The controller's ansible-playbook defers that import
to first use (controller.ansible.playbook); before it forks the worker of the first task from a collection, the
strategy loads it here, once, for every later worker to inherit.
"""

from __future__ import annotations

import builtins
import functools
import gc
import importlib.util
import marshal
import os
import sys
import threading
import types
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import ansible.collections.list
import ansible_mitogen.affinity
import ansible_mitogen.connection
import ansible_mitogen.loaders
import ansible_mitogen.module_finder
import ansible_mitogen.services
import ansible_mitogen.strategy
import ansible_mitogen.target
import mitogen
import mitogen.core
import mitogen.master
import mitogen.minify
from ansible.plugins.action import ActionBase

# a plain Policy assigns nothing: every process may run on every core
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

PREFIX = "mitogen-sources-"  # one set of sources is about 130 entries


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):  # type: ignore[misc,valid-type]
    """mitogen_linear without CPU pinning."""

    def run(self, iterator: Any, play_context: Any) -> Any:
        """The play, its workers forked from a heap the cyclic collector no longer walks (above)."""
        gc.freeze()
        return super().run(iterator, play_context)

    def _queue_task(self, host: Any, task: Any, task_vars: Any, play_context: Any) -> Any:
        # as resolved when the task was read (the property would resolve an unresolved one again, and may warn):
        # a collection's plugin by its FQCN; Ansible's and a repository's own by a short or ansible.* name
        action = task._resolved_action or ""
        if action.count(".") >= 2 and not action.startswith(("ansible.builtin.", "ansible.legacy.")):
            ansible.collections.list.list_collection_dirs  # noqa: B018 (the first use loads a deferred module)
        return super()._queue_task(host, task, task_vars, play_context)


class SourceCache:
    """Compiled code and minified source, by a hash of the source, in one directory."""

    def __init__(self, directory: str) -> None:
        # bytecode and minified text are only valid for this Python's bytecode and this mitogen's minifier
        version = f"{importlib.util.MAGIC_NUMBER.hex()}-{'.'.join(map(str, mitogen.__version__))}"
        # here, not at the top: an execution node runs this plugin without the controller (and without a cache)
        from controller.ansible.plugins.kept import Kept, loaded_code

        self.kept = Kept(directory, PREFIX, version)
        self.loaded_code = loaded_code

    def compile(self, source: Any, filename: Any, mode: str, flags: int = 0, dont_inherit: bool = False,
                optimize: int = -1) -> Any:
        """``compile`` as the callers' modules call it (no future flags of this one), from the cache when the
        same source was compiled under the same name before."""
        if not isinstance(source, (bytes, str)) or flags or optimize != -1:
            return builtins.compile(source, filename, mode, flags, True, optimize)
        key = self.kept.key(b"code", type(source).__name__, source, os.fsencode(filename), mode,
                            str(sys.flags.optimize))
        return self.kept.through(key, lambda: builtins.compile(source, filename, mode, 0, True), marshal.dumps,
                                 self.loaded_code)

    def compressor(self, compress: Callable[[bytes, int], bytes]) -> types.SimpleNamespace:
        """The ``zlib`` mitogen's responder compresses each module with (level 9, about 1 MB of sources a run), its
        ``compress`` from the cache for a source compressed before."""
        def compressed(data: bytes, level: int = -1) -> bytes:
            key = self.kept.key(b"compressed", str(level), data)
            return self.kept.through(key, lambda: compress(data, level), bytes, bytes)
        return types.SimpleNamespace(compress=compressed)

    def minifier(self, minimize: Callable[[Any], str]) -> Callable[[Any], str]:
        """``minimize`` (mitogen's minimize_source), from the cache for a source minified before."""
        def minimize_source(source: Any) -> str:
            key = self.kept.key(b"minified", type(source).__name__, source)
            return self.kept.through(key, lambda: minimize(source), str.encode, bytes.decode)  # UTF-8
        return minimize_source


def _remember_between_runs(directory: str | None) -> None:
    if not directory:
        return
    cache = SourceCache(directory)
    # a module's own name shadows the builtin: these two compile only to read a module's imports
    mitogen.master.compile = cache.compile
    ansible_mitogen.module_finder.compile = cache.compile
    mitogen.minify.minimize_source = cache.minifier(mitogen.minify.minimize_source)
    mitogen.master.zlib = cache.compressor(zlib.compress)  # its one use of zlib


_remember_between_runs(os.environ.get("CONTROLLER_SOURCE_CACHE"))


class Relays:
    """A context that only relays (the login user's interpreter under ``become``) is not prepared to run modules.

    mitogen runs ``init_child`` in every context of a connection's stack: it imports its target code there and
    forks a spare interpreter for isolated modules. A relay runs no module, and that preparation was about 0.15 s
    of each host's CPU in every run (docs/benchmarks.md). A relay asked for later as a task's own context (a
    ``become: false`` task) is prepared then, once.
    """

    final = threading.local()  # the stack element ContextService.get is connecting to, in the thread doing it
    guard = threading.Lock()
    preparing: ClassVar[dict[int, threading.Lock]] = {}  # by context: hosts prepare side by side

    @classmethod
    def install(cls) -> None:
        service = ansible_mitogen.services.ContextService
        connect, get = service._connect, service.get

        def _connect(self: Any, key: Any, spec: Any, via: Any = None) -> Any:
            if spec is getattr(cls.final, "spec", spec):
                return connect(self, key, spec, via)
            # mitogen's _connect without its last steps: forwarding the modules a target needs, and init_child
            context = getattr(self.router, spec["method"])(via=via, unidirectional=True, **spec["kwargs"])
            if via and spec.get("enable_lru"):
                self._update_lru(context, spec, via)
            mitogen.core.listen(context, "disconnect", lambda: self._on_context_disconnect(context))
            self._key_by_context[context] = key
            self._refs_by_context[context] = 0
            return {"context": context, "via": via, "init_child_result": None, "msg": None}

        @functools.wraps(get)
        def get_prepared(self: Any, stack: list[Any]) -> Any:
            cls.final.spec = stack[-1] if stack else None
            try:
                result = get(self, stack)
            finally:
                del cls.final.spec  # any other caller of _connect in this thread connects as mitogen does
            if isinstance(result, dict) and result["context"] is not None and result["init_child_result"] is None:
                return cls.prepare(self, result, stack[-1])
            return result

        service._connect = _connect
        service.get = get_prepared

    @classmethod
    def prepare(cls, service: Any, result: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """What mitogen's _connect does last, for a relay now asked for as a task's own context; answered as
        ContextService.get answers a connection lost meanwhile."""
        context = result["context"]
        with cls.guard:
            lock = cls.preparing.setdefault(context.context_id, threading.Lock())
        with lock:  # the response is shared by every task on that context: prepared once
            if result["init_child_result"] is None:
                try:
                    service._send_module_forwards(context)
                    result["init_child_result"] = context.call(
                        ansible_mitogen.target.init_child,
                        log_level=ansible_mitogen.services.LOG.getEffectiveLevel(),
                        candidate_temp_dirs=service._get_candidate_temp_dirs())
                except mitogen.core.ChannelError:
                    return {"context": None, "init_child_result": None, "method_name": spec["method"],
                            "msg": service.disconnect_msg}
        return result


def _stat_for_actions() -> None:
    """The stat that copy, template, fetch, assemble and unarchive ask for before they act, without the MIME type
    and file attributes: none of them reads either, and each costs the host a ``file`` or ``lsattr`` process (and
    a fork of its interpreter) per task and host. A ``stat`` task of the playbook's own is not touched."""
    stat = ActionBase._execute_remote_stat

    @functools.wraps(stat)
    def _execute_remote_stat(self: Any, *args: Any, **kwargs: Any) -> Any:
        execute = self._execute_module

        def lean(*given: Any, **named: Any) -> Any:
            if isinstance(named.get("module_args"), dict):
                named["module_args"] = {**named["module_args"], "get_mime": False, "get_attributes": False}
            return execute(*given, **named)
        self._execute_module = lean  # for this call only: the plugin's own modules run as it asks
        try:
            return stat(self, *args, **kwargs)
        finally:
            del self._execute_module
    ActionBase._execute_remote_stat = _execute_remote_stat


def _ssh_uncompressed() -> None:
    """ssh without compression unless the inventory asks for it (``mitogen_ssh_compression``, which mitogen turns
    on when unset): what mitogen sends is compressed already, and on a LAN the other compression costs both
    ends CPU for nothing."""
    connect = ansible_mitogen.connection._connect_ssh

    @functools.wraps(connect)
    def _connect_ssh(spec: Any) -> dict[str, Any]:
        options: dict[str, Any] = connect(spec)
        if spec.mitogen_ssh_compression() is None:
            options["kwargs"]["compression"] = False
        return options
    for method in ("ssh", "smart"):
        ansible_mitogen.connection.CONNECTION_METHOD[method] = _connect_ssh


Relays.install()
_stat_for_actions()
_ssh_uncompressed()
