"""Does a built model load and generate the same under every transformers the package allows?

pyproject allows `transformers>=4.48`; the development environment has transformers 5. This script
exports a model with `ablate build`'s own export code (ablate.build.export.export_model, which writes
the folder a build publishes as OUT/model), then, in each interpreter given (this one first), loads it
with plain `AutoTokenizer` / `AutoModelForCausalLM` in a fresh process that never imports ablate, and
records the transformers version, the tokenizer class, the RoPE base the config reads back, the sum of
the logits of a fixed input, and 8 greedily generated tokens. `same` is true when every interpreter
read the same RoPE base, computed the same logits (relative 1e-5) and generated the same text.

Make an interpreter with another transformers (the local registry has the CPU torch wheel):

    python3 -m venv /tmp/tf448 && /tmp/tf448/bin/pip install torch==2.13.0 'transformers==4.48.*'

Run: python bench/transformers_compat.py --python /tmp/tf448/bin/python [--python ...]
         [--model builtin:smollm2-135m] [--dir /tmp/compat]

Measured (development VM, CPU; torch 2.13 in every interpreter), the folders exported by export_model:

    model                 transformers  tokenizer                rope_theta  logits sum         8 tokens
    builtin:smollm2-135m  5.24.0        TokenizersBackend        100000.0    4703987.550306176  ", which is designed to provide a high"
                          4.57.6        PreTrainedTokenizerFast  100000.0    4703987.550306176  same
                          4.48.3        PreTrainedTokenizerFast  100000.0    4703987.550306176  same
    builtin:tiny-mistral  5.24.0 / 4.57.6 / 4.48.3 (same rows)   10000.0     -5.7828946065565   same (random weights)

`same` true for both. Without ablate.build.portable (the folder as transformers 5 saves it), 4.57 and 4.48
fail on the tokenizer ("Tokenizer class TokenizersBackend does not exist or is not currently imported")
and read smollm2's rope_theta as 10000 without a warning (other logits); with only the tokenizer class
fixed, their fast tokenizer returns token_type_ids and `generate` refuses them ("The following
`model_kwargs` are not used by the model: ['token_type_ids']").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

LOAD = r"""
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
out = {"transformers": transformers.__version__, "ablate_imported": False}
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
rope = getattr(model.config, "rope_parameters", None) or {}
out["tokenizer"] = type(tok).__name__
out["rope_theta"] = rope.get("rope_theta") if isinstance(rope, dict) and "rope_theta" in rope else getattr(model.config, "rope_theta", None)
with torch.no_grad():
    out["logits_sum"] = float(model(torch.arange(1, 17).unsqueeze(0)).logits.double().sum())
    enc = tok("The Python standard library", return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    out["text"] = tok.decode(ids[0][enc["input_ids"].shape[1]:])
out["ablate_imported"] = "ablate" in sys.modules
print(json.dumps(out))
"""


def export(model_ref: str, folder: Path) -> Path:
    """The model as `ablate build` exports it: load, save as the distill stage would, export_model."""
    from transformers.utils import logging as hf_logging

    from ablate.build.export import export_model
    from ablate.models.registry import load_model

    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(model_ref)
    source, target = folder / "source", folder / "model"
    for path in (source, target):
        shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    export_model(source, target)
    return target


def load_in(python: str, model_dir: Path) -> dict[str, Any]:
    """What a fresh `python` (its own transformers, no ablate on its path) makes of the folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [python, "-c", LOAD, str(model_dir)], capture_output=True, text=True, env=env, cwd="/", timeout=600
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"python": python, "error": lines[-1] if lines else f"exit {proc.returncode}"}
    return {"python": python, **json.loads(proc.stdout.strip().splitlines()[-1])}


def same(rows: list[dict[str, Any]]) -> bool:
    if any("error" in r for r in rows):
        return False
    first = rows[0]
    return all(
        r["rope_theta"] == first["rope_theta"]
        and math.isclose(r["logits_sum"], first["logits_sum"], rel_tol=1e-5)
        and r["text"] == first["text"]
        for r in rows
    )


def compare(model_ref: str, pythons: list[str], folder: Path) -> dict[str, Any]:
    model_dir = export(model_ref, folder)
    rows = [load_in(p, model_dir) for p in [sys.executable, *pythons]]
    return {"model": model_ref, "folder": str(model_dir), "same": same(rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", default=[], help="Another interpreter (repeatable).")
    parser.add_argument("--model", action="append", default=None, help="Default: builtin:smollm2-135m.")
    parser.add_argument("--dir", default="/tmp/ablate-transformers-compat")
    args = parser.parse_args()
    results = [
        compare(ref, args.python, Path(args.dir) / ref.replace(":", "-"))
        for ref in args.model or ["builtin:smollm2-135m"]
    ]
    print(json.dumps(results, indent=1))
    sys.exit(0 if all(r["same"] for r in results) else 1)


if __name__ == "__main__":
    main()
