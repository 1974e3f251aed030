"""The ``xrlib`` command: what is not a notebook (data fetch, the registry, params checks, the stage table, batch runs)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import yaml
from pathlib import Path

from xrlib.data.fetch import fetch_default, fetch_entry
from xrlib.data.registry import REGISTRY, get_entry
from xrlib.errors import ConfigError, DataError, XRLibError
from xrlib.io import write_text_atomic
from xrlib.notebooks import sync as sync_notebooks
from xrlib.paths import project_root
from xrlib import stages
from xrlib.params import check_params, load_params
from xrlib.profiles import dvc_set_args, load_overrides, profile_params, run_notebooks


def _dvc() -> str:
    """The dvc executable of this environment (falls back to the one on PATH)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def _commit_to_dvc_cache(project: Path) -> None:
    """Record data/ in DVC's cache (as `dvc add data` would), so `dvc status` is clean after a fetch."""
    if not (project / ".dvc").is_dir() or not (project / "data.dvc").is_file():
        return
    result = subprocess.run([_dvc(), "commit", "--force", "--quiet", "data.dvc"],
                            cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"`dvc commit data.dvc` failed in {project}: {result.stderr.strip()[-300:]}")


def _fetch(args: argparse.Namespace) -> None:
    root = Path(args.data) if args.data else stages.path("data")
    if not args.names:
        paths = fetch_default(root)
    else:
        if args.base and len(args.names) > 1:
            raise ConfigError("--base names one dataset's location; for several use --mirror (a folder of <name>/ folders)")
        paths = [p for name in args.names
                 for p in fetch_entry(get_entry(name), root, base_url=args.base or (f"{args.mirror}/{name}" if args.mirror else None))]
    print(f"{len(paths)} files verified under {root}")
    if not args.data:
        _commit_to_dvc_cache(project_root())


def _registry(args: argparse.Namespace) -> None:
    for entry in REGISTRY.values():
        where = entry.package or entry.base_url or entry.placement
        flag = " (embedded default)" if entry.embedded_default else ""
        print(f"{entry.name}{flag}\n  {entry.description}\n  licence: {entry.licence}; kind: {entry.kind}; "
              f"files: {len(entry.files) or 'n/a'}\n  from: {where}\n  cite: {entry.citation}\n")


def _experiment(args: argparse.Namespace) -> None:
    check_params(profile_params(args.profile))  # before any stage trains
    overrides = load_overrides(args.profile)
    base = load_params()
    command = [_dvc(), "exp", "run", "-n", args.name or args.profile, *dvc_set_args(overrides, base), *args.dvc_args]
    print("+", " ".join(command), flush=True)
    raise SystemExit(subprocess.run(command, cwd=project_root()).returncode)


def _params(args: argparse.Namespace) -> None:
    params = profile_params(args.profile)
    settings = check_params(params)
    print(f"params of profile '{args.profile}': {len(settings)} sections checked, restorer scale "
          f"{settings['pairs'].scale}, restored DRRs on the {settings['drr'].size_px} px DRR grid")
    if args.out:
        write_text_atomic(args.out, yaml.safe_dump(params, sort_keys=False))
        print(f"{args.out}: params.yaml with profile '{args.profile}' applied")


def _stages(args: argparse.Namespace) -> None:
    root = project_root()
    text = stages.dvc_yaml(load_params()["restorer"]["train_configs"], root)
    if args.write:
        write_text_atomic(root / "dvc.yaml", text)
        print(f"{root / 'dvc.yaml'} written from xrlib/stages.py")
    else:
        print(text, end="")


def _notebooks(args: argparse.Namespace) -> None:
    if args.sync:
        for path in sync_notebooks(args.names):
            print(f"paired {path.relative_to(project_root())} <-> {path.with_suffix('.ipynb').name}")
        return
    if not args.out:
        raise ConfigError("xrlib notebooks: give --out FOLDER for the executed copies (or --sync to pair the notebooks)")
    check_params(profile_params(args.profile))
    for path in run_notebooks(args.profile, args.out, args.names):
        print(f"executed {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fetch registry datasets into data/ (default: the embedded default)")
    fetch.add_argument("names", nargs="*", help="registry names (see `xrlib registry`)")
    fetch.add_argument("--base", help="base location for a url dataset (mirror URL, file:// URL or folder)")
    fetch.add_argument("--mirror", help="a folder or URL holding one <name>/ folder per dataset (e.g. ../shared/data)")
    fetch.add_argument("--data", help="data folder (default: the project's data/)")
    fetch.set_defaults(run=_fetch)
    registry = commands.add_parser("registry", help="list the datasets the compendium knows")
    registry.set_defaults(run=_registry)
    experiment = commands.add_parser("exp", help="run the pipeline as a DVC experiment with a profile's overrides")
    experiment.add_argument("profile", help="smoke, paper, real-data, ... (profiles/<name>.yaml) or a YAML path")
    experiment.add_argument("-n", "--name", help="experiment name (default: the profile's)")
    experiment.add_argument("dvc_args", nargs=argparse.REMAINDER, help="further `dvc exp run` arguments")
    experiment.set_defaults(run=_experiment)
    merged = commands.add_parser("params", help="check every params section and the rules joining them; "
                                 "--out writes params.yaml with the profile applied (e.g. for torchrun --params)")
    merged.add_argument("profile", nargs="?", default="smoke", help="smoke (params.yaml itself), paper, real-data, ...")
    merged.add_argument("--out", help="the merged params file to write")
    merged.set_defaults(run=_params)
    stage_table = commands.add_parser("stages", help="print dvc.yaml as xrlib/stages.py declares it; --write writes it")
    stage_table.add_argument("--write", action="store_true", help="write dvc.yaml")
    stage_table.set_defaults(run=_stages)
    notebooks = commands.add_parser("notebooks", help="batch-run notebooks with papermill outside DVC; --sync pairs "
                                    "each notebooks/NN_name.py (what git and DVC see) with its .ipynb (what the Lab opens)")
    notebooks.add_argument("names", nargs="*", help="notebooks by number or name (default: all, in order)")
    notebooks.add_argument("--profile", default="smoke", help="parameter profile (default: smoke)")
    notebooks.add_argument("--out", help="folder for the executed copies")
    notebooks.add_argument("--sync", action="store_true",
                           help="pair the notebooks: write a missing .py or .ipynb, else bring the older up to the newer")
    notebooks.set_defaults(run=_notebooks)
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
