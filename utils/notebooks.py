"""Run the project's notebooks unattended with papermill: `python -m utils.notebooks --profile auto`."""

import argparse
import sys
from pathlib import Path

import torch

from .profiles import PROFILES, REPO_ROOT, resolve_profile

NOTEBOOKS = ("research", "inference")


def run_notebooks(profile: str = "auto", output_dir=None, names=NOTEBOOKS, runs_dir=None) -> list:
    """Execute each named notebook top to bottom; returns the paths of the executed copies.

    The executed copies (with outputs) go to runs_dir (default runs/<profile>/); figures and JSON go to
    output_dir, or to each notebook's default for the profile when None.
    """
    import papermill  # imported here: it is slow to import and only this command needs it

    profile = resolve_profile(profile)
    if profile == "full" and not torch.cuda.is_available():
        raise RuntimeError("profile 'full' needs a CUDA GPU and none is available here; use --profile smoke")
    runs_dir = Path(runs_dir) if runs_dir else REPO_ROOT / "runs" / profile
    runs_dir.mkdir(parents=True, exist_ok=True)
    parameters = dict(profile=profile)
    if output_dir:
        parameters["output_dir"] = str(Path(output_dir).resolve())

    executed = []
    for name in names:
        if name not in NOTEBOOKS:
            raise ValueError(f"unknown notebook {name!r}; choose from {NOTEBOOKS}")
        target = runs_dir / f"{name}.ipynb"
        print(f"running {name}.ipynb ({profile} profile) -> {target}")
        papermill.execute_notebook(
            str(REPO_ROOT / f"{name}.ipynb"), str(target), parameters=parameters, cwd=str(REPO_ROOT), kernel_name="python3"
        )
        executed.append(target)
    return executed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="./run.sh (python -m utils.notebooks)", description=__doc__)
    parser.add_argument("--profile", choices=PROFILES, default="auto", help="full (GPU, real weights), smoke "
                        "(CPU, tiny random models) or auto (full when a CUDA GPU is present, else smoke)")
    parser.add_argument("--output-dir", default=None, help="folder for figures and JSON (default: pictures/ for "
                        "full runs, runs/smoke/ for smoke runs)")
    parser.add_argument("--only", choices=NOTEBOOKS, action="append", help="run only this notebook (repeatable)")
    args = parser.parse_args(argv)
    from papermill.exceptions import PapermillExecutionError

    try:
        executed = run_notebooks(args.profile, args.output_dir, names=args.only or NOTEBOOKS)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except PapermillExecutionError as error:
        # The executed copy keeps the full traceback; one line is enough here.
        print(f"error: cell {error.exec_count} failed with {error.ename}: {error.evalue}", file=sys.stderr)
        return 1
    for path in executed:
        print(f"done: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
