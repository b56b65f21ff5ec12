"""``fraqtl-calibrate``: the command line over :func:`engine.calibrate.run.calibrate`.

Never imports the app.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from engine import locations, models
from engine.calibrate.choose import DEFAULT_HOLDOUT
from engine.calibrate.manifest import TOOL
from engine.calibrate.report import write_report
from engine.calibrate.run import (
    CalibrationConfig,
    CalibrationInterrupted,
    CalibrationProgress,
    DEFAULT_BATCH,
    DEFAULT_TOKENS,
    calibrate,
    model_stem,
)
from engine.calibrate.spectrum import DEFAULT_K_ENERGY, K_ORDERS, energy_share
from engine.errors import EngineError
from engine.sidecar import write_manifest


def _parse_rank(text: str) -> int | str:
    if text in ("auto", "budget"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'auto', 'budget' or a number") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL,
        description="Calibrate D2 sidecars (K and V eigenbases, format v1) for a llama-family GGUF.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file or registry key (default: the bundled SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--corpus", action="append", default=[], metavar="FILE",
                   help="calibration text (.txt, .md, .pdf); repeat for more; default: the built-in corpus")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help=f"token budget (default {DEFAULT_TOKENS})")
    p.add_argument("--ctx", type=int, default=None,
                   help="sequence length (default: min(trained context, --tokens)); above the trained context YaRN is used")
    p.add_argument("--k-rank", type=_parse_rank, default="auto",
                   help="K protected rank per head: 'auto' (energy rule, see --k-energy), 'budget' (the energy "
                        "rule at the highest target at which d2:kautov16 costs no more than the locked recipe) "
                        "or a multiple of 8")
    p.add_argument("--k-energy", type=float, default=DEFAULT_K_ENERGY,
                   help=f"energy share the auto K rank must reach (default {DEFAULT_K_ENERGY})")
    p.add_argument("--k-order", choices=K_ORDERS, default="query",
                   help="which K directions stay exact: those the attention scores depend on most ('query', "
                        "default: also captures the queries) or those with the most K energy ('energy')")
    p.add_argument("--v-protect", type=int, default=None,
                   help="V protected rank written in the V header (default: the locked recipe at this head_dim)")
    p.add_argument("--holdout-tokens", type=int, default=DEFAULT_HOLDOUT, metavar="N",
                   help=f"corpus tokens after the calibrated ones on which the recipes with the locked recipe's "
                        f"memory are scored; the best becomes the manifest's recommended recipe (default "
                        f"{DEFAULT_HOLDOUT}; 0: skip)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"tokens per ubatch (default {DEFAULT_BATCH})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output folder (default: <data dir>/sidecars/<model>, where the engine looks)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="also write a receipt (calibration.json, README.md, energy.png) in DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    try:
        model_path = models.resolve(args.model)
        out_dir = args.output or (locations.data_dir() / "sidecars" / model_stem(model_path))
        config = CalibrationConfig(
            model_path=model_path, out_dir=out_dir, corpus=tuple(Path(c) for c in args.corpus), tokens=args.tokens,
            ctx=args.ctx, k_rank=args.k_rank, k_energy=args.k_energy, k_order=args.k_order, v_protect=args.v_protect,
            n_batch=args.batch,
            n_threads=args.threads, holdout=max(0, args.holdout_tokens),
        )
        progress = Progress(
            TextColumn("[bold]calibrating[/] seq {task.fields[seq]}"), BarColumn(),
            TextColumn("{task.fields[count]} tokens"), TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(), console=console, disable=args.quiet,
        )
        task = progress.add_task("calibrate", total=None, seq="-", count="-", rate="-", eta="-")

        def on_progress(p: CalibrationProgress) -> None:
            eta = "-" if not math.isfinite(p.eta_s) else time.strftime("%M:%S", time.gmtime(p.eta_s))
            progress.update(task, completed=p.tokens_done, total=p.tokens_total, seq=f"{p.sequence}/{p.n_sequences}",
                            count=f"{p.tokens_done:,}/{p.tokens_total:,}", rate=f"{p.tok_s:,.0f}", eta=eta)

        with progress:
            result = calibrate(config, on_progress)
        command = "fraqtl-calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
        result.manifest["command"] = command
        write_manifest(result.manifest_path, result.manifest)
        if args.report:
            write_report(result, args.report, f"Calibration of {model_path.name}")
    except CalibrationInterrupted as exc:
        console.print(f"[yellow]{exc}[/]")
        return 130
    except KeyboardInterrupt:
        console.print("[yellow]Calibration stopped; run the same command again to resume from the last finished sequence.[/]")
        return 130
    except EngineError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    ek = energy_share(result.k_eigenvalues, result.k.ranks).mean()  # type: ignore[arg-type]
    ev = energy_share(result.v_eigenvalues, result.v.protect).mean()
    resumed = f", {result.resumed_tokens:,} resumed" if result.resumed_tokens else ""
    console.print(
        f"wrote {result.k_path}, {result.v_path} and {result.manifest_path.name} from {result.tokens:,} tokens"
        f"{resumed} in {result.seconds:.1f} s; energy in the top R: K {ek:.3f} (mean rank "
        f"{result.manifest['recipe']['k_rank_mean']}), V {ev:.3f} (R={result.v.protect})"
    )
    recipe = result.manifest["recipe"]
    if "recommended" in recipe:
        console.print(f"recommended recipe: {recipe['recommended']} ({recipe['recommended_why']})")
    elif "recommended_why" in recipe:
        console.print(f"[yellow]recommended recipe: {recipe['recommended_why']}[/]")
    return 0
