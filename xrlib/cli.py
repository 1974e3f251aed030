"""The ``xrlib`` command: what is not a notebook (data fetch, the registry, batch runs)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from xrlib.data.fetch import fetch_default, fetch_entry
from xrlib.data.registry import REGISTRY, get_entry
from xrlib.errors import DataError, XRLibError
from xrlib.paths import data_dir, project_root


def _commit_to_dvc_cache(project: Path) -> None:
    """Record data/ in DVC's cache (as `dvc add data` would), so `dvc status` is clean after a fetch."""
    if not (project / ".dvc").is_dir() or not (project / "data.dvc").is_file():
        return
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([str(dvc if dvc.exists() else "dvc"), "commit", "--force", "--quiet", "data.dvc"],
                            cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"`dvc commit data.dvc` failed in {project}: {result.stderr.strip()[-300:]}")


def _fetch(args: argparse.Namespace) -> None:
    root = Path(args.data) if args.data else data_dir()
    if not args.names:
        paths = fetch_default(root)
    else:
        paths = [p for name in args.names for p in fetch_entry(get_entry(name), root, base_url=args.base)]
    print(f"{len(paths)} files verified under {root}")
    if not args.data:
        _commit_to_dvc_cache(project_root())


def _registry(args: argparse.Namespace) -> None:
    for entry in REGISTRY.values():
        where = entry.package or entry.base_url or entry.placement
        flag = " (embedded default)" if entry.embedded_default else ""
        print(f"{entry.name}{flag}\n  {entry.description}\n  licence: {entry.licence}; kind: {entry.kind}; "
              f"files: {len(entry.files) or 'n/a'}\n  from: {where}\n  cite: {entry.citation}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fetch registry datasets into data/ (default: the embedded default)")
    fetch.add_argument("names", nargs="*", help="registry names (see `xrlib registry`)")
    fetch.add_argument("--base", help="base location for a url dataset (mirror URL, file:// URL or folder)")
    fetch.add_argument("--data", help="data folder (default: the project's data/)")
    fetch.set_defaults(run=_fetch)
    registry = commands.add_parser("registry", help="list the datasets the compendium knows")
    registry.set_defaults(run=_registry)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xrlib`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except XRLibError as error:
        print(f"xrlib: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
