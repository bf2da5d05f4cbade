"""``sencache`` command line: ``demo``, ``quality``, ``train-reference``, ``calibrate DIR``, ``show PROFILE`` and
``plan PROFILE``."""

from __future__ import annotations

import argparse
import sys


def show(path: str, plot: str | None = None) -> None:
    """Print a profile's metadata and its per-step table (Jx, Jt; the drift, gap and output change where recorded);
    with ``plot``, draw Jx, Jt and the drift over t into it."""
    from sencache.profile import SensitivityProfile

    p = SensitivityProfile.load(path)
    if plot is not None:
        from sencache.cli_calibrate import plot as draw

        draw(p, plot)
    for k, v in sorted(p.metadata.items()):
        if k != "scheduler_config":
            print(f"{k}: {v}")
    drift = p.drift is not None and p.dt is not None  # profiles from before the planning tables have neither
    # the output's change to the next step, mean over the samples (profiles from before it have none)
    change = None if p.change_samples is None else p.change_samples[:, :, 0].mean(0).tolist()
    print(f"{'step':>4} {'timestep':>10} {'Jx':>12} {'Jt':>12}" + (f" {'drift':>12} {'dt':>10}" if drift else "")
          + (f" {'change':>12}" if change else ""))
    for i, (t, jx, jt) in enumerate(zip(p.timesteps.tolist(), p.jx.tolist(), p.jt.tolist(), strict=True)):
        more = f" {float(p.drift[i]):>12.5g} {float(p.dt[i]):>10.4g}" if drift else ""
        print(f"{i:>4} {t:>10.3f} {jx:>12.5g} {jt:>12.5g}" + more + (f" {change[i]:>12.5g}" if change else ""))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sencache`` script."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sencache", description="Sensitivity-aware caching for video DiTs")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="generate uncached and with SenCache on the shipped reference model and compare "
                   "(about 1.5 minutes on an idle 2-core CPU; see `sencache demo --help`)", add_help=False)
    sub.add_parser("quality", help="quality at matched NFE against MagCache, TeaCache and FirstBlockCache on the "
                   "reference model (see `sencache quality --help`)", add_help=False)
    sub.add_parser("calibrate", help="calibrate a profile for a pipeline saved with save_pretrained (see `sencache "
                   "calibrate --help`)", add_help=False)
    sub.add_parser("plan", help="the tolerances for a speed target (--target-nfe N) and the NFE predicted from a "
                   "profile's calibration trajectories (see `sencache plan --help`)", add_help=False)
    sub.add_parser("train-reference", help="train the reference model (see `sencache train-reference --help`)",
                   add_help=False)
    show_p = sub.add_parser("show", help="print a saved SensitivityProfile")
    show_p.add_argument("profile")
    show_p.add_argument("--plot", metavar="PNG", help="also draw Jx, Jt and the drift over the timestep (matplotlib)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from sencache.demo import main as demo_main

        demo_main(rest)
    elif args.command == "quality":
        from sencache.quality import main as quality_main

        quality_main(rest)
    elif args.command == "calibrate":
        from sencache.cli_calibrate import main as calibrate_main

        calibrate_main(rest)
    elif args.command == "plan":
        from sencache.cli_plan import main as plan_main

        plan_main(rest)
    elif args.command == "train-reference":
        from sencache.reference.train import main as train_main

        train_main(rest, prog="sencache train-reference")
    else:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            show(args.profile, args.plot)
        except (OSError, ValueError, ImportError) as exc:  # a bad profile, no matplotlib: one line, status 2
            parser.exit(2, f"sencache show: {' '.join(str(exc).split())}\n")


if __name__ == "__main__":
    main()
