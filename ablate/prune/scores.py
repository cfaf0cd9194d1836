"""Importance scores: what a scoring pass produces, how two passes merge, and their file format.

Activation scores keep the raw accumulators (`state`) of their pass, so they merge exactly with the
scores of a disjoint calibration set and can be re-read with another batch aggregation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ablate.errors import PruneError
from ablate.models.arch import shape_of
from ablate.prune.moments import Moments

FORMAT_VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".torch")


@dataclass
class ImportanceScores:
    """Scores of every prunable unit; higher = more important (keep).

    heads [L, H], mlp [L, F], hidden [D], depth [L] (per-layer score for depth_method; for `contiguous`,
    block importance), contiguous {k: LM loss with layers [s, s+k) dropped, for each start s; lower is
    better}. `state` keeps the raw accumulators of an activation pass so scores merge exactly and can be
    re-read with another batch_agg.
    """

    method: str
    heads: Tensor
    mlp: Tensor
    hidden: Tensor
    depth: Tensor
    settings: dict = field(default_factory=dict)
    shape: dict = field(default_factory=dict)
    contiguous: dict[int, Tensor] = field(default_factory=dict)
    depth_scores: dict[str, Tensor] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------------

    def summary(self) -> dict:
        return {"method": self.method, **self.settings, "shape": self.shape}

    def check_matches(self, model_or_config) -> None:
        """Refuse scores that were computed for another architecture."""
        config = getattr(model_or_config, "config", model_or_config)
        shape = shape_of(config)
        mismatched = {k: (v, shape.get(k)) for k, v in self.shape.items() if shape.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: scores {a} vs model {b}" for k, (a, b) in mismatched.items())
            raise PruneError(f"importance scores were computed for another model shape ({detail})")

    # -- combining -------------------------------------------------------------------------------

    def merge(self, other: ImportanceScores) -> ImportanceScores:
        """Scores of the union of two disjoint calibration sets (exact for activation scores)."""
        if self.method != "activation" or other.method != "activation" or not self.state or not other.state:
            raise PruneError("only activation scores with accumulator state can be merged")
        keys = ("seq_agg", "mlp_site", "depth_method", "contiguous_drops")
        for name, default in (("head_aggregation", "token_l2"), ("contiguous_metric", "lm_loss")):
            # Scores written before these settings existed used their defaults.
            if self.settings.get(name, default) != other.settings.get(name, default):
                raise PruneError(f"cannot merge importance scores computed with different {name}")
        if any(self.settings.get(k) != other.settings.get(k) for k in keys) or self.shape != other.shape:
            raise PruneError("cannot merge importance scores computed with different settings or shapes")
        state = {}
        for prefix in _moment_prefixes(self.state):
            state.update(
                Moments.from_state(self.state, prefix)
                .merge(Moments.from_state(other.state, prefix))
                .state(prefix)
            )
        for key, value in self.state.items():
            if key.rsplit(".", 1)[0] not in _moment_prefixes(self.state):
                state[key] = value + other.state[key]
        settings = dict(self.settings)
        for key in ("samples", "tokens"):
            settings[key] = self.settings.get(key, 0) + other.settings.get(key, 0)
        return scores_from_state(state, settings, self.shape)

    def with_batch_agg(self, batch_agg: str) -> ImportanceScores:
        """The same pass read with another batch aggregation."""
        if not self.state:
            raise PruneError(f"{self.method} scores have no accumulator state to re-aggregate")
        return scores_from_state(self.state, {**self.settings, "batch_agg": batch_agg}, self.shape)

    # -- files -----------------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        out = {"heads": self.heads, "mlp": self.mlp, "hidden": self.hidden, "depth": self.depth}
        out.update({f"contiguous.{k}": v for k, v in self.contiguous.items()})
        out.update({f"depth_scores.{k}": v for k, v in self.depth_scores.items()})
        out.update({f"state.{k}": v for k, v in self.state.items()})
        return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}

    def save(self, path: str | Path) -> Path:
        """Write to `path`: safetensors (with JSON metadata), or a torch file for .pt/.pth/.bin suffixes.

        Written to a temporary file and renamed, so a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "settings": self.settings,
            "shape": self.shape,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix in TORCH_SUFFIXES:
            with open(tmp, "wb") as handle:
                torch.save({"meta": meta, "tensors": self.tensors()}, handle)
        else:
            save_file(self.tensors(), str(tmp), metadata={"ablate": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImportanceScores:
        """Read a file written by `save` (the format is recognised from its content)."""
        path = Path(path)
        if not path.is_file():
            raise PruneError(f"importance file '{path}' does not exist")
        try:
            with open(path, "rb") as handle:
                head = handle.read(9)
            if len(head) == 9 and head[8:9] == b"{":
                with safe_open(str(path), framework="pt") as handle:
                    meta = json.loads((handle.metadata() or {})["ablate"])
                tensors = load_file(str(path))
            else:
                with open(path, "rb") as handle:
                    blob = torch.load(handle, weights_only=True)
                meta, tensors = blob["meta"], blob["tensors"]
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise PruneError(
                f"'{path}' is not a readable ablate importance file ({type(exc).__name__}: {exc}); recompute it"
            ) from exc
        if meta.get("format") != FORMAT_VERSION:
            raise PruneError(
                f"'{path}' has importance format {meta.get('format')}, expected {FORMAT_VERSION}"
            )

        def group(prefix: str) -> dict[str, Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        return cls(
            method=meta["method"],
            heads=tensors["heads"],
            mlp=tensors["mlp"],
            hidden=tensors["hidden"],
            depth=tensors["depth"],
            settings=meta["settings"],
            shape=meta["shape"],
            contiguous={int(k): v for k, v in group("contiguous.").items()},
            depth_scores=group("depth_scores."),
            state=group("state."),
        )


def _moment_prefixes(state: dict[str, Tensor]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".m2")})


def _head_aggregation(settings: dict) -> str:
    """Scores written before head_aggregation existed used token_l2."""
    return settings.get("head_aggregation", "token_l2")


def scores_from_state(state: dict[str, Tensor], settings: dict, shape: dict) -> ImportanceScores:
    """Scores read off an activation pass's accumulators with `settings["batch_agg"]`."""
    batch_agg, method = settings["batch_agg"], settings["depth_method"]
    depth_scores = {"block_importance": (1 - state["bi_cos_sum"] / state["bi_tokens"]).float()}
    if "lm_loss_sum" in state:
        base = state["base_loss_sum"] / state["loss_tokens"]
        depth_scores["lm_loss"] = (state["lm_loss_sum"] / state["loss_tokens"] - base).float()
    contiguous = {
        int(k.removeprefix("contig_").removesuffix("_loss_sum")): (v / state["loss_tokens"]).float()
        for k, v in state.items()
        if k.startswith("contig_") and k.endswith("_loss_sum")
    }
    contiguous |= {  # kl_to_teacher: mean KL per position
        int(k.removeprefix("contig_").removesuffix("_kl_sum")): (v / state["kl_tokens"]).float()
        for k, v in state.items()
        if k.startswith("contig_") and k.endswith("_kl_sum")
    }
    heads = Moments.from_state(state, "heads").finalize(batch_agg)
    n_heads = shape.get("num_attention_heads", heads.shape[1])
    if _head_aggregation(settings) == "channel_l2":  # [L, H * head_dim]: L2 over each head's channels
        heads = torch.linalg.vector_norm(heads.double().unflatten(1, (n_heads, -1)), dim=-1).float()
    return ImportanceScores(
        method="activation",
        heads=heads,
        mlp=Moments.from_state(state, "mlp").finalize(batch_agg),
        hidden=Moments.from_state(state, "hidden").finalize(batch_agg).sum(0),  # summed over the norms
        depth=depth_scores["lm_loss" if method == "lm_loss" else "block_importance"],
        settings=dict(settings),
        shape=dict(shape),
        contiguous=contiguous,
        depth_scores=depth_scores,
        state=dict(state),
    )
