"""Export the course's model to GGUF, the file format of llama.cpp, Ollama and LM Studio (`make gguf`).

    .venv/bin/python scripts/export_gguf.py                 # TinyGPT -> build/gguf/tinygpt-f32.gguf
    .venv/bin/python scripts/export_gguf.py --model gpt2    # any GPT-2 name or model folder

Steps, each done by the real tool:
1. ``glassbox.loader.load_model`` loads the model (offline, as in the lessons) and
   ``save_pretrained`` writes it as a Hugging Face folder into build/gguf/hf/<name>/, plus
   ``n_ctx`` in config.json: llama.cpp's converter reads the context length of a GPT-2 from
   ``n_ctx``, which transformers no longer writes (it writes only ``n_positions``).
2. llama.cpp's own ``convert_hf_to_gguf.py`` turns that folder into a GGUF file. The
   script is not part of the ``gguf`` package on PyPI; llama-cpp-python's source package
   vendors the whole of llama.cpp, converter included, so `make gguf` downloads that source
   package (a few MB; no build) with ``scripts/test_servers.sh source`` and runs the
   converter from it, with the course's Python (torch, transformers) and the ``gguf-py``
   the converter ships beside it (the version it was written for).

``--check`` reads the result back with ``gguf.GGUFReader`` and prints its tensors.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "gguf"
SOURCE_GLOB = "build/servers-src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"


class ExportError(RuntimeError):
    """The export could not be done; the message says why and what to do."""


def find_converter(given: str | None = None) -> Path:
    """llama.cpp's convert_hf_to_gguf.py: ``given``, $GLASSBOX_GGUF_CONVERTER, or the one in build/servers-src."""
    given = given or os.environ.get("GLASSBOX_GGUF_CONVERTER")
    if given:
        path = Path(given).resolve()
        if not path.is_file():
            raise ExportError(f"llama.cpp's converter is not at {given}.")
        return path
    found = sorted(glob.glob(str(ROOT / SOURCE_GLOB)))
    if not found:
        raise ExportError("llama.cpp's convert_hf_to_gguf.py was not found under build/servers-src/. Download "
                          "llama-cpp-python's source package (which vendors llama.cpp) with `scripts/test_servers.sh source`, "
                          "or run `make gguf`, which does it.")
    return Path(found[-1])


def safe_name(name: str) -> str:
    stem = Path(name).name if (os.sep in name or Path(name).is_dir()) else name
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem) or "model"


def save_hf_folder(name: str, folder: Path) -> dict:
    """Load ``name`` as the lessons do and save it as a Hugging Face folder with ``n_ctx`` added; returns the config."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.path.insert(0, str(ROOT))
    from glassbox.loader import load_model

    model, tokenizer = load_model(name, verbose=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.float().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["n_ctx"] = int(config["n_positions"])  # the converter's GPT-2 context length
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def convert(folder: Path, out: Path, converter: Path, outtype: str = "f32") -> None:
    """Run llama.cpp's converter on ``folder``; raise :class:`ExportError` with its output if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(converter.resolve()), str(folder.resolve()), "--outfile", str(out.resolve()), "--outtype", outtype]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=converter.parent)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ExportError(f"llama.cpp's converter failed (exit code {result.returncode}):\n{tail}")


def describe(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, type) of every tensor in a GGUF file, read with gguf.GGUFReader."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return [(tensor.name, tuple(int(d) for d in tensor.shape), tensor.tensor_type.name) for tensor in reader.tensors]


def export(name: str, out: Path | None = None, converter: str | None = None, outtype: str = "f32",
           workdir: Path = BUILD) -> Path:
    """Export ``name`` to GGUF (default ``workdir/<name>-<outtype>.gguf``); returns the file's path."""
    converter_path = find_converter(converter)
    stem = safe_name(name)
    out = (out or workdir / f"{stem}-{outtype}.gguf").resolve()
    folder = workdir / "hf" / stem  # the folder name becomes the GGUF general.name
    save_hf_folder(name, folder)
    convert(folder, out, converter_path, outtype)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tinygpt", help="what to export: tinygpt (default), a GPT-2 name, or a model folder")
    parser.add_argument("--out", type=Path, help="the GGUF file to write (default build/gguf/<model>-<outtype>.gguf)")
    parser.add_argument("--converter", help="llama.cpp's convert_hf_to_gguf.py (default: the one in build/servers-src)")
    parser.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"],
                        help="number format of the weights in the file (default f32: the same numbers as the lessons)")
    parser.add_argument("--check", action="store_true", help="read the file back with gguf.GGUFReader and list its tensors")
    args = parser.parse_args(argv)
    try:
        out = export(args.model, args.out, args.converter, args.outtype)
    except ExportError as error:
        print(f"make gguf: {error}", file=sys.stderr)
        return 1
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"Wrote {shown} ({out.stat().st_size / 1e6:.1f} MB).")
    if args.check:
        tensors = describe(out)
        print(f"{len(tensors)} tensors, e.g.:")
        for name, shape, kind in tensors[:6]:
            print(f"  {name:28s} {str(shape):18s} {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
