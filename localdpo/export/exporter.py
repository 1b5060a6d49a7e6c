"""`localdpo export`: a trained model as something people run, a plain Hugging Face directory or a GGUF file
with an Ollama Modelfile, each with a model card that says what it was trained on.

    result = export_model("runs/ldpo-seed0", "exported", fmt="gguf", outtype="f16")

The source (`resolve_source`) is a run directory (its `final/`), a run's `final/` (all weights, or a LoRA
adapter), a checkpoint (`checkpoints/step-000040`, rebuilt from the run's `config.yaml`), an adapter
directory with `base=`, or any model name `localdpo.models.loading.load_model` takes. A LoRA adapter is merged into
its base (`merge_and_unload`). The output directory holds, for `hf`: `config.json`,
`generation_config.json`, `model.safetensors`, the tokenizer files with `chat_template.jinja`, and `README.md`
(the model card, `localdpo.export.modelcard`); for `gguf`: `model.gguf` (`localdpo.export.gguf`), `Modelfile` (`localdpo.export.ollama`) and
`README.md`. A GGUF is read back before it is kept (`localdpo.export.gguf.read_back`); one that differs from
the model beyond its type's tolerance is an `ExportError` and nothing is written. The directory is filled
beside its place and renamed in (`localdpo.storage.fileio.atomic_directory`), checked by `localdpo.storage.writeguard` first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from localdpo.export.gguf import ExportError, OutType, RoundTrip  # noqa: F401  (ExportError: part of this API)
from localdpo.export.modelcard import RUN_CONFIG, model_card, round_trip_lines, run_config, run_summary
from localdpo.storage.writeguard import WriteMode

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
CARD = "README.md"


class ExportFormat(str, Enum):
    """What `localdpo export` writes."""

    HF = "hf"
    GGUF = "gguf"


class SourceKind(str, Enum):
    """What an export source is."""

    MODEL = "model"
    """A Hugging Face model directory (a full-weight run's `final/`)."""
    ADAPTER = "adapter"
    """A peft adapter directory (a LoRA run's `final/`), merged into its base."""
    CHECKPOINT = "checkpoint"
    """A trainer checkpoint (`checkpoints/step-N`): the run's base model with the checkpoint's weights."""
    NAMED = "named"
    """A name `load_model` resolves: the embedded model, `tiny`, a hub id."""


@dataclass(frozen=True)
class ExportSource:
    """Where the weights to export are, and the run that made them (None when unknown)."""

    kind: SourceKind
    path: str
    """The model, adapter or checkpoint directory, or the model name."""
    run_dir: Path | None = None


def _is_checkpoint(path: Path) -> bool:
    return all((path / name).is_file() for name in ("manifest.json", "state.json", "model.safetensors"))


def _run_of(path: Path) -> Path | None:
    return path if (path / RUN_CONFIG).is_file() else None


def resolve_source(name: str | os.PathLike) -> ExportSource:
    """The `ExportSource` that `name` names; `ExportError` for a directory that holds no model."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return ExportSource(SourceKind.NAMED, str(name))
    if (path / RUN_CONFIG).is_file() and not _is_checkpoint(path):
        final = path / "final"
        if not final.is_dir():
            raise ExportError(
                f"{name}: this run has no final/ (not finished, or checkpoint.save_final=false); export one "
                f"of its checkpoints instead ({path / 'checkpoints'}/step-...)"
            )
        kind = SourceKind.ADAPTER if (final / "adapter_config.json").is_file() else SourceKind.MODEL
        return ExportSource(kind, str(final), path)
    if _is_checkpoint(path):
        run_dir = _run_of(path.parent.parent)
        if run_dir is None:
            raise ExportError(
                f"{name}: a checkpoint is rebuilt from its run's {RUN_CONFIG}, which is not at "
                f"{path.parent.parent / RUN_CONFIG}; export it from inside its run directory"
            )
        return ExportSource(SourceKind.CHECKPOINT, str(path), run_dir)
    if (path / "adapter_config.json").is_file():
        return ExportSource(SourceKind.ADAPTER, str(path), _run_of(path.parent))
    if (path / "config.json").is_file():
        return ExportSource(SourceKind.MODEL, str(path), _run_of(path.parent))
    raise ExportError(
        f"{name}: neither a run directory, a model or adapter directory (config.json, adapter_config.json) "
        "nor a checkpoint (manifest.json, state.json, model.safetensors)"
    )


def load_source(source: ExportSource, *, base: str | None = None, cache_dir: str | os.PathLike | None = None):
    """`(model, tokenizer)` of `source`: float32, CPU, eval mode, any LoRA adapter merged.

    The base of an adapter or checkpoint is `base` when given, else the run's `model.name` (its `tiny_seed`
    included), else the adapter's own `base_model_name_or_path`.
    """
    from localdpo.models.loading import load_model, merge_adapter

    config = run_config(source.run_dir) if source.run_dir is not None else None
    if source.kind in (SourceKind.MODEL, SourceKind.NAMED):
        return load_model(source.path, cache_dir=cache_dir)
    if base is not None:
        model, tokenizer = load_model(base, cache_dir=cache_dir)
    elif config is not None:
        from localdpo.trainer.modeling import load_base_model

        model, tokenizer = load_base_model(config)
    elif source.kind is SourceKind.ADAPTER:
        adapter = json.loads((Path(source.path) / "adapter_config.json").read_text())
        if not adapter.get("base_model_name_or_path"):
            raise ExportError(
                f"{source.path}: the adapter names no base model (base_model_name_or_path) and no run's "
                f"{RUN_CONFIG} is beside it; pass --base MODEL"
            )
        return load_model(source.path, cache_dir=cache_dir)
    if source.kind is SourceKind.ADAPTER:
        model = merge_adapter(model, source.path)
        if (Path(source.path) / "tokenizer_config.json").is_file():
            from localdpo.models.loading import load_tokenizer

            tokenizer = load_tokenizer(source.path)
    else:
        model = _with_checkpoint_weights(model, Path(source.path), config)
    model.eval()
    return model, tokenizer


def _with_checkpoint_weights(model, path: Path, config):
    """`model` (the run's base) with the trainable tensors of checkpoint `path` (a LoRA adapter merged)."""
    import torch
    from safetensors.torch import load_file

    from localdpo.trainer.checkpoint import SHARDED, CheckpointError, verify_checkpoint
    from localdpo.trainer.modeling import apply_lora, trainable_tensors
    from localdpo.trainer.sharded_checkpoint import read_sharded_weights

    try:
        manifest = verify_checkpoint(path)
    except CheckpointError as error:
        raise ExportError(f"checkpoint does not verify: {error}") from None
    if config.model.lora.enabled:
        model = apply_lora(model, config)
    params = trainable_tensors(model)
    if manifest.get("layout") == SHARDED:  # an FSDP run's: also stores tied aliases (lm_head.weight)
        tensors = {k: v for k, v in read_sharded_weights(path).items() if k in params}
    else:
        tensors = load_file(str(path / "model.safetensors"))
    if set(params) != set(tensors):
        differ = sorted(set(params) ^ set(tensors))[:3]
        raise ExportError(f"{path}: its tensors do not fit the run's model ({', '.join(differ)}, ...)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return model.merge_and_unload() if config.model.lora.enabled else model


@dataclass
class ExportResult:
    """What `export_model` wrote."""

    out: Path
    name: str
    """The model's name (`general.name`, and the Ollama name the card uses): OUT's, made Ollama-safe."""
    files: list[str]
    fmt: ExportFormat
    outtype: OutType | None
    round_trip: RoundTrip | None = None
    notes: list[str] = field(default_factory=list)
    """What the user should know (a Modelfile without TEMPLATE, a greedy answer that rounding changed)."""


def ollama_name(title: str) -> str:
    """`title` as an Ollama model name (lower case letters, digits, `.`, `_`, `-`)."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", title.lower()).strip("-._") or "steered"


def export_model(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: ExportFormat | str = ExportFormat.GGUF,
    outtype: OutType | str = OutType.F16,
    mode: WriteMode | str = WriteMode.CREATE,
    base: str | None = None,
    steers: str | os.PathLike | None = None,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> ExportResult:
    """Export `source` (`resolve_source`) to the directory `out` as the module docstring says.

    `outtype`: the GGUF's tensor type (`hf` writes float32); `base`: the base of an adapter or checkpoint
    (`load_source`); `steers`: the train steer file, for the card, when the run's config names none;
    `verify`: read a GGUF back before keeping it. `out` is checked (`localdpo.storage.writeguard`, an existing one
    needs `mode=overwrite`) before anything is loaded.
    """
    from localdpo.export.gguf import check_llama, read_back, write_gguf
    from localdpo.export.ollama import modelfile
    from localdpo.storage.fileio import atomic_directory, atomic_write_text
    from localdpo.storage.writeguard import check_output, claimed_output

    fmt, mode = ExportFormat(fmt), WriteMode(mode)
    outtype = OutType(outtype) if fmt is ExportFormat.GGUF else None
    inputs = (source,) if base is None else (source, base)
    check_output(out, mode, inputs=inputs, directory=True)
    resolved = resolve_source(source)
    if fmt is ExportFormat.GGUF and resolved.kind is SourceKind.MODEL:  # before the weights are loaded
        from transformers import AutoConfig

        check_llama(AutoConfig.from_pretrained(resolved.path))
    summary = run_summary(resolved.run_dir, steers=steers) if resolved.run_dir is not None else None
    model, tokenizer = load_source(resolved, base=base, cache_dir=cache_dir)
    title = ollama_name(Path(out).expanduser().resolve().name)
    result = ExportResult(out=Path(out), name=title, files=[], fmt=fmt, outtype=outtype)
    with claimed_output(out, mode, inputs=inputs, directory=True) as target, atomic_directory(target) as tmp:
        if fmt is ExportFormat.HF:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        else:
            write_gguf(model, tokenizer, tmp / GGUF_FILE, outtype, name=title)
            written = modelfile(tokenizer, GGUF_FILE)
            atomic_write_text(tmp / MODELFILE, written.text)
            result.notes += [written.note] if written.note else []
            if verify:
                result.round_trip = read_back(model, tokenizer, tmp / GGUF_FILE, outtype)
                problems = result.round_trip.problems()
                if problems:
                    raise ExportError(
                        f"the written GGUF does not read back as the model: {'; '.join(problems)}; nothing "
                        "written (please report it)"
                    )
                if not result.round_trip.greedy_match:
                    result.notes.append(
                        f"{outtype.value} rounding changes the greedy answer to the check prompt; f32 keeps it"
                    )
        if fmt is ExportFormat.GGUF:
            exported_as = f"a GGUF file ({outtype.value})"
            use = [
                "```",
                f"ollama create {title} -f {MODELFILE} && ollama run {title}",
                f"llama-cli -m {GGUF_FILE} -cnv",
                "```",
                "",
                *round_trip_lines(result.round_trip, tokenizer),
            ]
        else:
            exported_as = "a Hugging Face model"
            use = [
                "```python",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                'model = AutoModelForCausalLM.from_pretrained("."); tokenizer = AutoTokenizer.from_pretrained(".")',
                "```",
            ]
        source_text = f"`{resolved.path}` ({resolved.kind.value})"
        card = model_card(title=title, exported_as=exported_as, source=source_text, summary=summary, use=use)
        atomic_write_text(tmp / CARD, card)
        result.files = sorted(p.name for p in tmp.iterdir())
    return result
