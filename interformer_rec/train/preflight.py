"""What a run checks before its first step.

* Every split the config names exists, is readable and has the schema's columns
  (:func:`check_splits`): a bad valid or test split stops the job at start, not after
  the first epoch; a training split too small for one global batch is an error.
* A checkpoint is resumed (or evaluated) only under the model and data config it was
  written with (:func:`check_same_config`): a changed key is an error naming it, not a
  ``size mismatch`` traceback or a silent mix of two configs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

from interformer_rec.arrays import DataError
from interformer_rec.config import Config, ConfigError, model_in_use

# The config sections a checkpoint's tensors and meaning depend on.
RUN_DEFINING = ("model", "data.schema")


def check_splits(cfg: Config, num_batches: Callable[[str], int], global_batch: int) -> int:
    """Open every split named in ``cfg.data``; return the training steps per epoch.

    Args:
        num_batches: ``split -> batches`` of this rank's reader of that split (building
            the reader opens and checks every file).
        global_batch: rows per training step over all ranks.
    """
    steps = 0
    for split in ("train", "valid", "test"):
        path = getattr(cfg.data, split)
        if path is None:
            continue
        try:
            n = num_batches(split)
        except DataError as e:
            raise DataError(f"data.{split}: {e}") from None
        if split == "train":
            steps = n
    if steps == 0:
        from interformer_rec.data.reader import count_rows

        raise DataError(
            f"data.train={cfg.data.train}: {count_rows(cfg.data.train, cfg.data.filters.get('train'))} rows, fewer than one global batch "
            f"of {global_batch} (train.batch_size x ranks): nothing to train on"
        )
    return steps


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _section(config: Mapping[str, Any], dotted: str) -> Mapping[str, Any]:
    for part in dotted.split("."):
        config = config.get(part) or {}
    return config


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """``key: saved -> current`` for every run-defining key that differs."""
    out = []
    for section in RUN_DEFINING:
        a = _flatten(_section(saved, section), section + ".")
        b = _flatten(_section(current, section), section + ".")
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return out


def check_same_config(saved: Optional[Mapping[str, Any]], cfg: Config, where: str) -> None:
    """Raise :class:`ConfigError` if the config saved with checkpoint ``where`` differs
    from ``cfg`` in a run-defining key (:data:`RUN_DEFINING`). The saved config is read
    by the current code first, so a key added since, at its default, is no change."""
    from interformer_rec.config import config_from_dict

    if saved is None:
        raise ConfigError(f"{where}: the checkpoint records no config; cannot check that it matches this one")
    try:
        saved = config_from_dict(saved).to_dict()
    except ConfigError as e:
        raise ConfigError(f"{where}: the config saved with the checkpoint no longer loads ({e})") from None
    current = cfg.to_dict()
    saved["model"], current["model"] = model_in_use(saved["model"]), model_in_use(current["model"])
    changes = config_changes(saved, current)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; ... ({len(changes)} in all)" if len(changes) > 8 else "")
        raise ConfigError(
            f"{where} was written under another model/data config ({shown}). "
            "Resume with the config it was written with, or train into a new train.out_dir."
        )
