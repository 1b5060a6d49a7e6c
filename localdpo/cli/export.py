"""`localdpo export RUN_OR_MODEL OUT`: a trained model as a GGUF file with an Ollama Modelfile, or a plain
Hugging Face directory, each with a model card (`localdpo.export.exporter`)."""

from __future__ import annotations

import argparse

from localdpo.storage.writeguard import add_write_mode_arguments

HELP = "export a run's model (or a checkpoint, an adapter, any model) as GGUF + Ollama Modelfile or HF"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_MODEL",
        help="run directory (its final/), final/ or adapter directory, checkpoint (checkpoints/step-N), "
        "or a model name (smollm2-135m-instruct, tiny, a hub id)",
    )
    parser.add_argument("out", metavar="OUT", help="directory to write (an existing one is refused)")
    add_write_mode_arguments(parser, what="OUT", steer_file=False)
    parser.add_argument(
        "--format",
        default="gguf",
        choices=("gguf", "hf"),
        help="gguf: model.gguf + Modelfile for llama.cpp / Ollama (Llama models); hf: a Hugging Face "
        "directory (default gguf)",
    )
    parser.add_argument(
        "--outtype",
        default="f16",
        choices=("f32", "f16", "q8_0"),
        help="tensor type of the GGUF's matrices (default f16; f32 is exact)",
    )
    parser.add_argument(
        "--base", default=None, help="base model of an adapter or checkpoint (default: the run's model.name)"
    )
    parser.add_argument(
        "--steers",
        default=None,
        help="train steer file, for the model card, when the run's config names none",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="keep the GGUF without reading it back (default: compare its logits and greedy answer first)",
    )


def run(args: argparse.Namespace) -> int:
    from localdpo.export.exporter import GGUF_FILE, MODELFILE, export_model
    from localdpo.storage.writeguard import write_mode_of

    result = export_model(
        args.source,
        args.out,
        fmt=args.format,
        outtype=args.outtype,
        mode=write_mode_of(args),
        base=args.base,
        steers=args.steers,
        verify=args.verify,
    )
    kind = f"GGUF {args.outtype}" if args.format == "gguf" else "Hugging Face model"
    print(f"wrote {result.out}/ ({kind}): {', '.join(result.files)}")
    trip = result.round_trip
    if trip is not None:
        same = "same" if trip.greedy_match else "different"
        print(
            f"read back: max |logit difference| {trip.max_abs_logit_diff:.3g} (accepted up to "
            f"{trip.tolerance:.3g}), greedy answer ({len(trip.model_answer)} tokens) {same}"
        )
    for note in result.notes:
        print(f"note: {note}")
    if args.format == "gguf":
        print(
            f"run it: ollama create {result.name} -f {result.out / MODELFILE}   or   "
            f"llama-cli -m {result.out / GGUF_FILE} -cnv"
        )
    return 0
