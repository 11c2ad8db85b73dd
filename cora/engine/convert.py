"""Import of the official CORA release (github.com/tgxs002/CORA) into our checkpoint format.

The release has two files:
- a localizer checkpoint: `{"model": state_dict, "model_ema": state_dict (optional), "args": Namespace, ...}`
  with keys named after `models/fast_detr.py` / `models/dab_transformer.py` (`query_embed.weight`,
  `input_proj.*`, `transformer.encoder.*`, `transformer.decoder.*`, `bbox_embed.*`, `objectness_embed.*`,
  `text_proj.*`; CLIP's `backbone.*` / `classifier.*` are frozen copies we take from open_clip instead);
- a region prompt: `{"attnpool.positional_embedding": Tensor[S*S+1, C]}` (the official, fine-tuned
  positional-embedding form; a paper-form Tensor[S, S, C] is accepted too).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from cora.checkpoint import load_official_file
from cora.modeling.localizer import map_official_state_dict

PROMPT_KEY = "attnpool.positional_embedding"
# Official keys that hold frozen CLIP weights (loaded from open_clip, not from the release).
FROZEN_PREFIXES = ("backbone.", "classifier.")


def official_model_state(checkpoint: dict, use_ema: bool = True) -> dict[str, Tensor]:
    """The model weights of an official checkpoint: its EMA copy when present (used for evaluation)."""
    for key in (("model_ema", "model") if use_ema else ("model",)):
        state = checkpoint.get(key)
        if isinstance(state, dict) and state:
            if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
                state = {k[len("module."):]: v for k, v in state.items()}
            return state
    raise ValueError(f"no model weights in the checkpoint: expected a 'model' entry, got keys {sorted(checkpoint)[:10]}")


def convert_official(localizer_path: str | Path, prompt_path: str | Path,
                     use_ema: bool = True) -> tuple[dict[str, Tensor], list[str]]:
    """Returns (state, the official keys that were not used).

    State keys follow `CORA.learned_state_dict()` (`localizer.*`, `prematcher.text_proj.*`), plus
    `region_prompt`: the prompt file's tensor, for `RegionClassifier.load_prompt` (either form).
    """
    official = official_model_state(load_official_file(localizer_path), use_ema)
    localizer = map_official_state_dict(official)
    state = {f"localizer.{k}": v for k, v in localizer.items()}
    state.update({f"prematcher.{k}": v for k, v in official.items() if k.startswith("text_proj.")})
    used = set(localizer) | {k for k in official if k.startswith(("text_proj.", "transformer.decoder.bbox_embed."))}
    unused = sorted(k for k in official if k not in used and not k.startswith(FROZEN_PREFIXES))

    state["region_prompt"] = load_prompt_file(prompt_path)
    return state, unused


def load_prompt_file(path: str | Path) -> Tensor:
    """A region-prompt file (the official release's, or `cora train-prompt`'s prompt.pth: {PROMPT_KEY: tensor},
    or the tensor alone) -> Tensor[S*S+1, C] or Tensor[S, S, C], for `RegionClassifier.load_prompt`."""
    prompt = load_official_file(path)
    if isinstance(prompt, dict):
        if PROMPT_KEY not in prompt:
            raise ValueError(f"{path}: expected the key {PROMPT_KEY!r}, got {sorted(prompt)[:10]}")
        prompt = prompt[PROMPT_KEY]
    if not isinstance(prompt, Tensor) or prompt.dim() not in (2, 3):
        raise ValueError(f"{path}: expected Tensor[S*S+1, C] or Tensor[S, S, C], got {type(prompt).__name__}")
    return prompt


def convert_to_checkpoint(localizer_path, prompt_path, cfg, out_dir, use_ema: bool = True) -> list[str]:
    """Official files -> our checkpoint folder (model.safetensors + config.json); returns unused keys.

    Raises ValueError naming the missing keys if the release does not fill the model of `cfg`, or the first
    weight with a NaN / infinite value.
    """
    from cora.checkpoint import check_finite, load_into, save_checkpoint
    from cora.modeling.detector import CORA

    state, unused = convert_official(localizer_path, prompt_path, use_ema)
    check_finite(state, f"{localizer_path} / {prompt_path}")
    model = CORA.from_config(cfg, random_init=True)  # CLIP weights are not part of our checkpoint
    model.region_classifier.load_prompt(state.pop("region_prompt"))
    learned = model.learned_state_dict()
    pool = {k: v for k, v in learned.items() if k.startswith("region_classifier.pool.")}
    load_into(model, {**state, **pool})
    save_checkpoint(out_dir, model.learned_state_dict(), cfg)
    return unused
