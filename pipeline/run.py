"""Run one stage: ``python -m pipeline.run <stage> [args]`` is ``python -m pipeline.<stage> [args]``.

The workflow's rules call stages this way. On a local run the Snakefile starts a warm fork server
(``pipeline.core.forkserver``) and the stage runs in a child of it, skipping the seconds of importing
torch; without one it runs in this process. ``--serve`` runs the server itself.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.core import forkserver


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        parser = argparse.ArgumentParser(prog="python -m pipeline.run --serve")
        parser.add_argument("--serve", required=True, help="socket path to listen on")
        parser.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
        args = parser.parse_args(argv)
        forkserver.serve(args.serve, args.parent)  # never returns
    stages = forkserver.list_stages()
    if not argv or argv[0] not in stages:
        got = f"unknown stage '{argv[0]}'" if argv else "no stage given"
        print(f"error: {got}; usage: python -m pipeline.run <stage> [args] (stages: {', '.join(stages)})",
              file=sys.stderr)  # fmt: skip
        return 2
    stage, rest = argv[0], argv[1:]
    path = os.environ.get(forkserver.ENV_VAR)
    if path:
        code = forkserver.run_via_server(path, stage, rest)
        if code is not None:
            return code
    return forkserver.run_stage(stage, rest)


if __name__ == "__main__":
    raise SystemExit(main())
