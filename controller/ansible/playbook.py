"""The ansible-playbook the controller starts: Ansible's own, with what each start of it parses kept between runs.

Before it reads a playbook, every ansible-playbook process parses ansible-core's configuration definitions
(base.yml) and its plugin routing (ansible_builtin_runtime.yml, about 10,000 lines), and each collection's
meta/runtime.yml when it first loads from that collection: about 0.1 s of CPU in every syntax check, check and
apply, with the same result each time (docs/benchmarks.md). Where CONTROLLER_PARSED_CACHE names a directory
(the controller sets it to one in its state dir) each result is kept there (Kept) under a hash of the text it
was parsed from, and read back instead: as plain data, what marshal writes (anything else is parsed every time).
So are the code of the methods ``dataclasses`` makes from source as Ansible's modules are imported (about 470,
0.05 s of compiling; all in one entry, MadeMethods) and the documentation of each plugin Ansible reads for the
plugin's settings (pickled, with the tags Ansible gives its values; KeptDocumentation). Installed as
``controller-ansible-playbook``, beside ``controller``: as for Ansible's own script, Python looks for modules
where it is installed, never in the working directory (the repository).

Three more start-up costs are deferred or trimmed (docs/benchmarks.md). Mitogen's planner imports
``ansible.collections.list``, and with it the galaxy CLI (cryptography's x509, packaging, the dependency
resolver), only to list the collection directories when a task runs a module from a collection: here the module
loads when first used, and the strategy loads it in this process before it forks the worker of the first such
task, so that later workers inherit it (controller_linear). And Ansible walks the stack to name who issued a
deprecation (every run issues one, for a strategy that is not ansible.builtin's): ``inspect.stack()`` reads the
source of every frame for context lines that nothing reads, so the walk here asks for none. A syntax check,
which connects to no host, does not import and read the documentation of every connection, shell and become
plugin there is, as the playbook executor does before a run (about 0.13 s). And the process ends as soon as
its exit handlers have run, without the interpreter's teardown of every object the run made.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import marshal
import os
import pickle
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from controller.ansible.plugins.kept import Kept, loaded_code

CACHE = "CONTROLLER_PARSED_CACHE"
# a FIFO the controller names for a run of more than one pass: a syntax check, a check, then the applies it decides
# on, in one process that keeps its start-up and the hosts' interpreters; each later pass's arguments come through it
PASSES = "CONTROLLER_PASSES"
PASS_MARKER = "CONTROLLER-PASS-END"
PREFIX = "ansible-parsed-"
KEEP_METHODS = 4096  # dataclass methods in the one entry: ansible-core's and mitogen's are about 600


def command() -> list[str]:
    """The start of the command line of every ansible-playbook the controller runs (found on the job's PATH, as
    ``ansible-playbook`` is: beside this Python)."""
    return ["controller-ansible-playbook"]


def keep_parses(directory: str) -> Kept:
    """Ansible's start-up parses, kept in ``directory``; called before ``ansible.constants`` parses base.yml (and
    Ansible's modules define their dataclasses)."""
    import ansible
    import yaml

    # a parse is only as good as the parser: another ansible-core or PyYAML starts afresh
    kept = Kept(directory, PREFIX, f"{ansible.__version__}-{yaml.__version__}-{marshal.version}")
    methods = MadeMethods(kept)
    # the module's own name shadows the builtin: its one use makes each method a dataclass adds from source
    setattr(dataclasses, "exec", methods.run)  # noqa: B010
    atexit.register(methods.keep)

    import ansible.config.manager as manager
    import ansible.utils.collection_loader._collection_finder as finder

    def keeping(kind: str, parse: Callable[..., Any]) -> Callable[..., Any]:
        def parsed(text: Any, *args: Any) -> Any:
            raw = text.read() if hasattr(text, "read") else text  # base.yml comes as an open file
            # more than plain data (a date, a tagged value) marshal refuses: not kept, parsed each time
            return kept.through(kept.key(kind, type(raw).__name__, raw), lambda: parse(raw, *args), marshal.dumps,
                                marshal.loads)
        return parsed

    manager.yaml_load = keeping("config definitions", manager.yaml_load)
    finder._meta_yml_to_dict = keeping("collection routing", finder._meta_yml_to_dict)
    return kept


class KeptDocumentation:
    """PyYAML as Ansible's plugin loader reads each plugin's documentation for its settings (about 20 plugins and
    fragments before a run, 0.06 s of parsing): each parse kept under a hash of the text and of its tags (where it
    comes from, whether it is trusted), pickled, as the parsed values carry those tags. Any other load is PyYAML's."""

    def __init__(self, kept: Kept) -> None:
        self.kept = kept

    def install(self, reader: types.ModuleType) -> None:
        """``reader``'s ``yaml`` is this one from now on."""
        reader.yaml = self  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        import yaml

        return getattr(yaml, name)

    def load(self, stream: Any, Loader: Any) -> Any:
        """``yaml.load(stream, Loader=Loader)``, read back for documentation parsed before."""
        import yaml
        from ansible.module_utils._internal._datatag import AnsibleTagHelper
        from ansible.parsing.yaml.loader import AnsibleLoader

        if Loader is not AnsibleLoader or not isinstance(stream, str):
            return yaml.load(stream, Loader=Loader)
        tags = sorted(map(repr, AnsibleTagHelper.tags(stream)))
        key = self.kept.key("plugin documentation", *tags, str.__str__(stream))
        return self.kept.through(key, lambda: yaml.load(stream, Loader=Loader), _pickled, pickle.loads)


def _pickled(value: Any) -> bytes:
    """``pickle.dumps(value)``; a value pickle refuses, however it says so, is refused as Kept expects (not kept)."""
    try:
        return pickle.dumps(value)
    except Exception as refused:
        raise ValueError(f"not kept: {refused}") from refused


class MadeMethods:
    """The code of the methods ``dataclasses`` makes from source (``__init__``, ``__eq__``... about 470 in a run,
    0.05 s of compiling), all in one entry: read at the start, written back at the end when a run made new ones."""

    def __init__(self, kept: Kept) -> None:
        self.kept = kept
        self.key = kept.key("dataclass methods", sys.version)
        self.codes = self._read()
        self.made = False

    def _read(self) -> dict[bytes, bytes]:
        data = self.kept.read(self.key)
        try:
            codes = marshal.loads(data) if data else {}
        except (ValueError, EOFError, TypeError):
            return {}
        return codes if isinstance(codes, dict) else {}

    def run(self, source: str, globals: dict[str, Any] | None, local: dict[str, Any]) -> None:
        """``exec(source, globals, local)``, its code read back when the same source was compiled before."""
        digest = hashlib.sha256(source.encode()).digest()
        try:
            made = loaded_code(self.codes[digest])
        except (KeyError, ValueError, EOFError, TypeError):
            made = compile(source, "<string>", "exec", dont_inherit=True)
            self.codes[digest] = marshal.dumps(made)
            self.made = True
        exec(made, globals, local)

    def keep(self) -> None:
        """Write the entry back with what this run made (and what other runs kept meanwhile); past KEEP_METHODS,
        with this run's alone (a repository's own plugins may bring dataclasses of their own)."""
        if self.made:
            codes = {**self._read(), **self.codes}
            self.kept.write(self.key, marshal.dumps(codes if len(codes) <= KEEP_METHODS else self.codes))


class Deferred(types.ModuleType):
    """A module whose code runs when one of its own names is first read. (``importlib.util.LazyLoader``'s runs as
    soon as anything reads ``__spec__``, which every later ``import`` of the module does.)"""

    def __getattr__(self, name: str) -> Any:  # only for a name the module does not hold yet
        spec = self.__spec__
        assert spec is not None and spec.loader is not None, self.__name__
        self.__class__ = types.ModuleType  # type: ignore[assignment]  # a plain module from now on
        try:
            spec.loader.exec_module(self)
        except BaseException:
            self.__class__ = Deferred  # a failed import fails again, as itself, at the next use
            raise
        return getattr(self, name)


def defer(name: str) -> None:
    """Module ``name``, unless it is imported already, imported now and run when first used."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    module.__class__ = Deferred
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)  # as an import of the submodule would


def walk_stack_without_source() -> None:
    """Ansible's stack walk, each frame without its lines of source (``inspect.stack(0)``)."""
    import ansible.module_utils._internal._stack as stack

    def iter_stack() -> Iterator[inspect.FrameInfo]:
        _skip_stackwalk = True  # the walk skips the frames that hold this name, this one included
        for frame in inspect.stack(0):
            if "_skip_stackwalk" not in frame.frame.f_locals:
                yield frame

    stack.iter_stack = iter_stack


def connect_nowhere(executor: types.ModuleType) -> None:
    """The playbook executor without its preload of every connection, shell and become plugin (each one imported
    and its documentation parsed for its settings): a syntax check connects to no host."""
    nothing = types.SimpleNamespace(all=lambda *args, **kwargs: iter(()))
    for loader in ("connection_loader", "shell_loader", "become_loader"):
        setattr(executor, loader, nothing)


def main() -> None:
    """``ansible-playbook ARG...``."""
    directory = os.environ.get(CACHE)
    kept = keep_parses(directory) if directory else None
    defer("ansible.collections.list")
    # the rest once Ansible's command line is imported, as it imports them: after the checks it makes first (the
    # locale, a configuration that cannot be read) and before it loads any plugin
    from ansible.cli.playbook import main as playbook

    if kept is not None:
        import ansible.plugins.loader as plugins
        import ansible.utils.plugin_docs as fragments

        documentation = KeptDocumentation(kept)
        for reader in (plugins, fragments):  # a plugin's documentation, a doc fragment's
            documentation.install(reader)
    walk_stack_without_source()
    passes = os.environ.get(PASSES)
    if "--syntax-check" in sys.argv[1:] and not passes:  # alone (as a first pass, a check follows it)
        import ansible.executor.playbook_executor as executor

        connect_nowhere(executor)

    sys.argv[0] = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")  # as its own script has it
    code = one_pass(playbook)
    while passes:
        # each pass told apart in the output, then the next one read from the controller. ansible-runner reads
        # plain lines after an event only once more output comes, which here it would not: an empty event token
        # (as its display callback ends each event with) after the line has it read at once
        print(f"{PASS_MARKER}\t{code}\n\x1b[Ke30=\x1b[4D\x1b[K", end="", flush=True)
        with open(passes, encoding="utf-8") as told:
            line = told.read()
        if not line:  # the controller closed it without a word: no more passes
            break
        sys.argv[1:] = json.loads(line)
        command_line_afresh()
        code = one_pass(playbook)
    leave(code)


def command_line_afresh() -> None:
    """Forget what Ansible made of the last pass's command line, which it makes once per process."""
    import ansible.utils.vars as variables
    from ansible.parsing.vault import VaultSecretsContext
    from ansible.utils.context_objects import GlobalCLIArgs

    setattr(GlobalCLIArgs, "_Singleton__instance", None)  # noqa: B010 (the Singleton metaclass's own)
    VaultSecretsContext._current = None  # each pass reads the vault secrets again, as its own process would
    # and its extra vars and the variables the command line makes (ansible_check_mode, ansible_limit...), which
    # Ansible keeps on the functions that first made them
    for made, name in ((variables.load_extra_vars, "extra_vars"), (variables.load_options_vars, "options_vars")):
        if hasattr(made, name):
            delattr(made, name)
    # the collection loader stays as the first pass configured it (the same paths), and says so each time
    warnings.filterwarnings("ignore", "AnsibleCollectionFinder has already been configured")


def one_pass(playbook: Callable[[], object]) -> object:
    """Ansible's ``ansible-playbook`` main once, with the arguments in ``sys.argv``; its exit code."""
    try:
        playbook()
    except SystemExit as done:
        return done.code
    return 0


def leave(code: object) -> NoReturn:
    """Exit as Python does (other threads stopped or joined, exit handlers run, output flushed), without freeing one
    by one the objects a run made: the playbook's process ends at once, and nothing else reads its memory."""
    getattr(threading, "_shutdown")()  # noqa: B009 (what the interpreter's own exit calls first: private to it)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # as the interpreter's own exit when its output cannot be flushed
            code = 120
    os._exit(code or 0)
