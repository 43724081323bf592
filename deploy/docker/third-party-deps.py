"""Print the third-party requirements of Forgeline packages, one per line, for an image build.

    python third-party-deps.py /src/proto /src/kit[tinymodel] /src/services/registry > deps.txt

Only each package's pyproject.toml is read, so an image can install these (torch and the like)
in a layer built before Forgeline's own sources are copied in: a change to Forgeline's code then
rebuilds a small layer, not the whole environment. Forgeline's own packages (``forgeline-*``) are
left out; they are installed afterwards with ``--no-deps``. Standard library only (the build
stage has nothing else yet).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_ARGUMENT = re.compile(r"^(?P<path>[^\[\]]+)(?:\[(?P<extras>[^\]]*)\])?$")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


def requirements(argument: str) -> list[str]:
    """The requirements of the package at ``PATH`` or ``PATH[EXTRA,...]``, Forgeline's own left
    out.

    Raises:
        SystemExit: the argument, its pyproject.toml or one of its extras is wrong.
    """
    match = _ARGUMENT.match(argument)
    if match is None:
        raise SystemExit(f"{argument!r} is not PATH or PATH[EXTRA,...]")
    pyproject = Path(match["path"]) / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"cannot read [project] from {pyproject}: {exc}") from None
    wanted = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in filter(None, (e.strip() for e in (match["extras"] or "").split(","))):
        if extra not in optional:
            raise SystemExit(f"{pyproject} has no extra {extra!r} (it has {sorted(optional)})")
        wanted += optional[extra]
    kept = []
    for requirement in wanted:
        name = _NAME.match(requirement)
        if name is None:
            raise SystemExit(f"{pyproject}: cannot read the requirement {requirement!r}")
        if name[1].lower().startswith("forgeline-"):
            if name[2]:
                # Its extras' requirements would be lost with --no-deps: name them on the path.
                raise SystemExit(
                    f"{pyproject}: {requirement!r} asks for extras; pass that package's path "
                    "with them instead (PATH[EXTRA])"
                )
            continue
        kept.append(requirement)
    return kept


def main(arguments: list[str]) -> int:
    if not arguments:
        raise SystemExit(__doc__)
    seen: set[str] = set()
    for argument in arguments:
        for requirement in requirements(argument):
            if requirement not in seen:
                seen.add(requirement)
                print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
