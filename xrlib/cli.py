"""The ``xrlib`` command: what is not a notebook (data fetch, the registry, params checks, the stage table, batch runs,
the release of trained weights and restoring anyone's DRRs with them)."""

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


def _release(args: argparse.Namespace) -> None:
    from xrlib.models.release import make_release

    manifest = make_release(args.profile, profile_params(args.profile), out=Path(args.out) if args.out else None,
                            models=args.models or None)
    for name, entry in manifest["models"].items():
        print(f"{entry['file']}: {entry['kind']}, step {entry['steps']}, {entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}")
    print(f"{len(manifest['models'])} models, {manifest['total_bytes'] / 1e6:.2f} MB of {manifest['max_bytes'] / 1e6:g} MB; "
          f"manifest: {Path(args.out or 'models') / 'manifest.json'}")


def _restore(args: argparse.Namespace) -> None:
    from xrlib.restore import restore_paths

    records = restore_paths(args.images, args.out, args.weights, args.sampler, args.steps, args.seed, args.input_px,
                            args.device, args.batch_size, progress=not args.quiet)
    for record in records:
        print(f"{record['input']} -> {Path(args.out) / record['output']} ({record['output_size'][0]}x{record['output_size'][1]})")
    if args.check_pair:
        from xrlib.restore import check_restored_pair

        table = check_restored_pair(records, args.out)
        print(table.to_string(index=False))
        print(f"{int(table.passed.sum())} of {len(table)} pair checks pass; {Path(args.out) / 'pair_checks.json'}")


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
    release = commands.add_parser("release", help="export a finished run's weights to models/ with a manifest "
                                  "(SHA-256, config, data and licences, metrics)")
    release.add_argument("--profile", default="real-data", help="the profile whose finished run to release (default: real-data)")
    release.add_argument("--models", nargs="*", help="some of the restore.configs names, ddpm_lq, munit_lq (default: all)")
    release.add_argument("--out", help="folder to write (default: the project's models/)")
    release.set_defaults(run=_release)
    restore = commands.add_parser("restore", help="restore DRRs (PNG, .npy line integrals, DICOM) with trained weights")
    restore.add_argument("images", nargs="+", help="input files: PNG (8/16-bit grey), .npy line integrals, DICOM")
    restore.add_argument("--out", required=True, help="folder for <stem>.png (16-bit) and <stem>.json")
    restore.add_argument("--weights", default="released",
                         help="released (models/, its default restorer), released:NAME, a release folder or a .safetensors file")
    restore.add_argument("--steps", type=int, help="InDI or sampling steps (default: the release's, those 05 restored DRRs with; a weights file: 20)")
    restore.add_argument("--sampler", choices=("ddpm", "ddim", "dpm_solver"),
                         help="sampler of a diffusion restorer (default: the release's; an InDI restorer takes none)")
    restore.add_argument("--seed", type=int, default=0, help="seed (each image's own seed is drawn from it and its name)")
    restore.add_argument("--input-px", type=int, help="resize each input so its longer side is this (default: the release's; a weights file: its own size)")
    restore.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    restore.add_argument("--batch-size", type=int, help="images per batch (default: 8 on a GPU, 1 on a CPU)")
    restore.add_argument("--quiet", action="store_true", help="no progress bar")
    restore.add_argument("--check-pair", action="store_true",
                         help="two inputs, a DRR with a nodule and without it: check the restored pair's fine detail, "
                              "anatomy and nodule contrast (DIR/pair_checks.json)")
    restore.set_defaults(run=_restore)
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
