"""`localdpo train --config FILE key=value ...`: train one method on steers (see docs/trainer.md)."""

from __future__ import annotations

HELP = "train a model on steers with ldpo, dpo, sft or sft_full (YAML config + key=value overrides)"


def add_arguments(parser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config file (default: built-in defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-5 method=dpo"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args) -> int:
    import yaml

    from localdpo.trainer.config import load_config, to_dict

    config = load_config(args.config, args.overrides)  # a bad key or value: one line from localdpo.cli.main
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    from localdpo.trainer.loop import run_training

    result = run_training(config)
    final = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.final.items()) if isinstance(v, float))
    print(f"run_dir: {result.run_dir}\nfinal: {final}")
    return 0
