"""``fraqtl-bench``: paired, reproducible receipts for memory, fidelity, retrieval and speed.

A thin command line over :mod:`bench.kld`, :mod:`bench.retrieval`, :mod:`bench.memory`,
:mod:`bench.ui_lag` (the app's responsiveness) and :mod:`engine.shape`. Every subcommand runs each arm in its own worker process and writes a
receipt under ``bench/receipts/<date>-<name>/`` (or ``--out``). ``--quick`` picks grids that
finish on two CPU cores in a minute or two; the defaults are the GPU grids.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.arms import ArmConfig
from engine.errors import EngineError

DEFAULT_ARMS = "f16,q8_0,q4_0,d2"
#: decode speed: tokens decoded before the clock starts, and the fewest tokens timed (issue 9)
WARMUP_TOKENS = 4
MIN_TIMED_TOKENS = 64

#: (quick grid, full grid) per subcommand option
GRIDS = {
    "kld": {"chunks": (2, 8), "chunk_len": (256, 4096)},
    # full-grid depths put most needles more than 1024 tokens (D2's exact window) from the end
    "niah": {"ctx": ([512], [2048, 3072, 4096, 5120, 6144, 7168]), "depths": ([0.25, 0.75], [0.1, 0.3, 0.5, 0.7]),
             "needles": (1, 2), "max_tokens": (24, 32)},
    "ruler": {"ctx": ([512], [2048, 4096, 7168]), "samples": (1, 3), "max_tokens": (24, 48)},
    "memory": {"ctx": ([512, 1024], [32768, 65536, 131072]), "decode": (64, 64)},
    "speed": {"ctx": ([512, 1024], [32768, 131072]), "decode": (64, 128)},
    "split": {"ctx": ([512], [131072]), "decode": (64, 64), "agreement_chunks": (1, 2),
              "agreement_len": (512, 2048)},
}


def _ints(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1024 if part.endswith("k") else 1
        out.append(int(float(part.rstrip("k")) * mult))
    return out


def _floats(text: str) -> list[float]:
    return [float(p) for p in text.split(",")]


def _arms(text: str) -> list[str]:
    arms = [ArmConfig.parse(p).label for p in text.split(",") if p.strip()]
    return list(dict.fromkeys(arms))


def _common(p: argparse.ArgumentParser, batch: int) -> None:
    p.add_argument("--model", default=None, help="registry key or GGUF path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--arms", type=_arms, default=_arms(DEFAULT_ARMS),
                   help=f"comma-separated arms: f16, q8_0, q4_0, d2, d2:lite, d2:<recipe> (default {DEFAULT_ARMS})")
    p.add_argument("--quick", action="store_true", help="small grid for 2 CPU cores (CI smoke runs)")
    p.add_argument("--out", type=Path, default=None, help="receipts root (default bench/receipts)")
    p.add_argument("--name", default=None, help="receipt folder name after the date")
    p.add_argument("--batch", type=int, default=batch, help=f"n_batch = n_ubatch (default {batch})")
    p.add_argument("--n-gpu-layers", type=int, default=-1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per arm before it counts as failed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--basis", choices=("sidecar", "random"), default="sidecar",
                   help="D2 bases: the model's calibrated sidecars (default) or seeded random orthonormal "
                        "bases, a control labelled as such in the receipt (memory/speed on a shape model)")


def _text(p: argparse.ArgumentParser) -> None:
    from bench.evaltext import DEFAULT_TEXT, TEXT_CHOICES

    p.add_argument("--text", choices=TEXT_CHOICES, default=DEFAULT_TEXT,
                   help="real: the shipped evaluation text (prose and technical writing, never used for "
                        "calibration; default); synthetic: the templated generator of older receipts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraqtl-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("kld", help="KLD, same-top-token rate and PPL of each arm vs the f16 cache")
    _common(p, 512)
    _text(p)
    p.add_argument("--chunks", type=int, default=None)
    p.add_argument("--chunk-len", type=int, default=None)

    p = sub.add_parser("niah", help="needle in a haystack: depths × needles × context lengths")
    _common(p, 512)
    _text(p)
    p.add_argument("--ctx", type=_ints, default=None, help="context lengths in tokens, e.g. 2k,4k,7k")
    p.add_argument("--depths", type=_floats, default=None, help="needle depths in [0, 1]")
    p.add_argument("--needles", type=int, default=None, help="needles per (context, depth)")
    p.add_argument("--max-tokens", type=int, default=None)

    p = sub.add_parser("ruler", help="RULER-style tasks: multi-key/multi-value NIAH, VT, CWE, QA")
    _common(p, 512)
    _text(p)
    from bench.tasks import RULER_TASKS

    p.add_argument("--ctx", type=_ints, default=None)
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(RULER_TASKS),
                   help=f"comma-separated of {','.join(RULER_TASKS)}")
    p.add_argument("--samples", type=int, default=None, help="cases per task and context")
    p.add_argument("--max-tokens", type=int, default=None)

    for name, text in (("memory", "peak VRAM per arm and context, with llama.cpp's buffers and the estimate"),
                       ("speed", "prefill and decode tokens/s per arm and context")):
        p = sub.add_parser(name, help=text)
        _common(p, 2048)
        p.add_argument("--ctx", type=_ints, default=None, help="context lengths, e.g. 32k,64k,128k")
        p.add_argument("--decode", type=int, default=None,
                       help=f"greedy tokens timed after the fill and {WARMUP_TOKENS} untimed warm-up tokens "
                            f"(at least {MIN_TIMED_TOKENS}, or 0 for none)")
        p.add_argument("--no-fill", action="store_true", help="allocate the context without filling it")
        p.add_argument("--yarn", action="store_true", help="YaRN above the trained context")

    p = sub.add_parser("split", help="one model's layers over several GPUs against one GPU: peak VRAM per GPU, "
                                     "tok/s, llama.cpp's buffers beside the per-GPU estimate, d2 logits agreement")
    _common(p, 2048)
    p.set_defaults(arms=_arms("f16,q8_0,d2"))
    p.add_argument("--ctx", type=_ints, default=None, help="context lengths (default 128k)")
    p.add_argument("--gpus", type=int, default=2, help="GPUs the layers are split over (default 2)")
    p.add_argument("--split-mode", choices=("layer",), default="layer",
                   help="llama.cpp's split mode for the multi-GPU run (layer: whole layers per GPU)")
    p.add_argument("--tensor-split", type=_floats, default=None,
                   help="each GPU's share of the layers, e.g. 1,1 (default: by free memory, as llama.cpp does)")
    p.add_argument("--decode", type=int, default=None, help=f"greedy tokens timed (at least {MIN_TIMED_TOKENS})")
    p.add_argument("--yarn", action="store_true", help="YaRN above the trained context")
    p.add_argument("--agreement-model", default="default",
                   help="model for d2 split vs d2 on one GPU logits (registry key or GGUF; default SmolLM2; "
                        "'none' skips it)")
    p.add_argument("--agreement-chunks", type=int, default=None, help="chunks of text for the agreement")
    p.add_argument("--agreement-len", type=int, default=None, help="tokens per agreement chunk")

    p = sub.add_parser("ui-lag", help="the app's event-loop lag during ingest, prefill, streaming and a comparison")
    p.add_argument("--model", default=None, help="registry key or GGUF path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--pages", type=int, default=40, help="pages of the generated PDF (about 750 tokens each)")
    p.add_argument("--ctx", type=_ints, default=[32768], help="context in tokens (YaRN above the trained length)")
    p.add_argument("--max-tokens", type=int, default=48, help="answer length")
    p.add_argument("--interval-ms", type=float, default=5.0, help="how often the probe asks to wake")
    p.add_argument("--no-arms", dest="arms", action="store_false", help="skip the arm comparison")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a phase may take before the run fails")
    p.add_argument("--out", type=Path, default=None, help="receipts root (default bench/receipts)")
    p.set_defaults(quick=False)

    from engine.shape import FTYPES, SHAPES

    p = sub.add_parser("shape-model", help="write a random-weight GGUF with a named model's exact shape")
    p.add_argument("--shape", default="mistral-7b-instruct-v0.3", choices=sorted(SHAPES))
    p.add_argument("--type", default="Q4_K_M", choices=sorted(FTYPES))
    p.add_argument("--layers", type=int, default=None, help="fewer layers (a tiny model for tests)")
    p.add_argument("--scale", type=int, default=1, help="divide every width by this (tiny models)")
    p.add_argument("--method", default="direct", choices=("direct", "llama"),
                   help="direct: write quantized blocks with llama.cpp's type policy; llama: F16 then "
                        "llama_model_quantize")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-control-sidecars", action="store_true",
                   help="do not write random-orthonormal control sidecars for its D2 arm")
    p.add_argument("-o", "--output", type=Path, required=True)
    return parser


def _apply_grid(args: argparse.Namespace) -> None:
    for option, (quick, full) in GRIDS.get(args.command, {}).items():
        if getattr(args, option, None) is None:
            setattr(args, option, quick if args.quick else full)
    if args.quick and args.command in ("memory", "speed") and args.batch == 2048:
        args.batch = 256
    if args.quick and args.command == "split" and args.batch == 2048:
        args.batch = 256
    if args.command in ("memory", "speed", "split") and 0 < args.decode < MIN_TIMED_TOKENS:
        raise EngineError(f"--decode {args.decode} times too few tokens for a stable rate; give at least "
                          f"{MIN_TIMED_TOKENS} (or 0 to skip decoding).")


def _shape_model(args: argparse.Namespace) -> int:
    from engine.shape import SHAPES, write_shaped_gguf
    from bench.runner import progress_bar

    shape = SHAPES[args.shape].scaled(args.layers, args.scale)
    with progress_bar() as bar:
        task = bar.add_task(f"shape {shape.key} {args.type}", total=None)
        path = write_shaped_gguf(args.output, shape, args.type, args.seed, args.method,
                                 progress=lambda d, t: bar.update(task, completed=d // (1 << 20), total=t // (1 << 20)))
    print(path)
    if not args.no_control_sidecars:
        from bench.controls import write_control_sidecars

        print(write_control_sidecars(Path(path), seed=args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    try:
        if args.command == "shape-model":
            return _shape_model(args)
        from engine.models import resolve

        model = resolve(args.model)
        _apply_grid(args)
        if args.command == "kld":
            from bench import kld

            out = kld.run(args, model, argv_used)
        elif args.command == "ui-lag":
            from bench import ui_lag

            args.ctx = args.ctx[0]
            out = ui_lag.run(args, model, argv_used)
        elif args.command == "split":
            from bench import split

            agreement = None if args.agreement_model == "none" else resolve(
                None if args.agreement_model == "default" else args.agreement_model)
            try:
                out = split.run(args, model, argv_used, agreement_model=agreement)
            except ValueError as exc:
                raise EngineError(str(exc)) from exc
        elif args.command in ("niah", "ruler"):
            from bench import retrieval

            out = (retrieval.run_niah if args.command == "niah" else retrieval.run_ruler)(args, model, argv_used)
        else:
            from bench import memory

            out = memory.run(args.command, args, model, argv_used)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
