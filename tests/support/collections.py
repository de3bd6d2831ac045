"""Collections of our own, built as tarballs that depend on each other."""

from __future__ import annotations

from pathlib import Path

from lab.repository import collection_tarball, write_tree


def dependent_collections(directory: Path) -> dict[str, Path]:
    """acme.base, and acme.app that depends on it, built into tarballs."""
    meta = "readme: README.md\nauthors: [lab]\nversion: 1.0.0\nnamespace: acme\n"
    filters = {"base": 'def shout(text):\n    return str(text).upper()\n\n\n'
                       'class FilterModule:\n    def filters(self):\n        return {"shout": shout}\n',
               "app": 'def banner(text):\n    return "# " + str(text) + ", managed by Ansible"\n\n\n'
                      'class FilterModule:\n    def filters(self):\n        return {"banner": banner}\n'}
    built = {}
    for name, depends in (("base", ""), ("app", "dependencies: {'acme.base': '>=1.0.0'}\n")):
        source = write_tree(directory / f"acme.{name}", {
            "galaxy.yml": f"{meta}name: {name}\n{depends}", "README.md": f"acme.{name}\n",
            "meta/runtime.yml": "requires_ansible: '>=2.15'\n", f"plugins/filter/{name}.py": filters[name]})
        built[name] = collection_tarball(source, directory)
    return built
