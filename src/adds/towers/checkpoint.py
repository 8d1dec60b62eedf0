"""How a checkpoint records its towers, and how the record is matched and resolved on load.

A checkpoint's ``config.json`` holds the :class:`~adds.towers.TowerConfig` and :meth:`Towers.identity`. For weights
from a local file neither holds an absolute path: the config's ``pretrained`` is the file's *name*, its
``preprocess_from`` the resolved normalisation (inline JSON, so the checkpoint does not depend on a sidecar file;
the same whenever ``preprocess_from`` was given, e.g. as a JSON file), and the identity adds ``weights_file``:
name, SHA-256 and the path relative to the checkpoint directory. On load
(:func:`resolve_weights_file`) the file is looked for, in order, at

1. the path given explicitly (``tower_weights`` / ``--tower-weights``), used as is;
2. the recorded relative path, from the checkpoint directory;
3. the file name inside the checkpoint directory;
4. the file name in each folder of ``$ADDS_WEIGHTS_PATH`` (``os.pathsep``-separated);
5. the recorded ``pretrained`` itself (checkpoints written before this scheme recorded an absolute path),

and a candidate is taken only if its SHA-256 matches. The towers' fingerprint must then match as well. A recorded
``cache_dir`` (where a tag's download was cached on the training machine) is used only if it exists on this one;
otherwise the default cache (``HF_HOME``...) is (:func:`local_tower_config`).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from adds.towers.config import TowerConfig
from adds.towers.core import Towers
from adds.towers.identity import file_sha256

__all__ = ["IDENTITY_KEYS", "local_tower_config", "tower_record", "resolve_weights_file", "tower_differences"]

#: Tower properties that must agree between a checkpoint and the towers it is loaded onto.
IDENTITY_KEYS = ("model", "aligned", "embed_dim", "token_dim", "image_size", "quick_gelu", "pool", "preprocess",
                 "fingerprint")


def tower_record(towers: Towers, config_towers: dict, directory: Path) -> tuple[dict, dict]:
    """``(config["towers"], identity)`` to write into a checkpoint in ``directory``: no absolute weights path."""
    identity = towers.identity()
    config_towers = dict(config_towers)
    weights_file = towers.source.get("weights_file") if "file_sha256" in towers.source else None
    if weights_file is not None or config_towers.get("preprocess_from"):
        # the resolved normalisation inline: never a path to a JSON file, nor a sidecar the checkpoint depends on
        config_towers["preprocess_from"] = json.dumps(towers.preprocess, sort_keys=True)
    if weights_file is not None:
        path = Path(weights_file)
        config_towers["pretrained"] = path.name
        record = {"name": path.name, "sha256": identity["file_sha256"]}
        try:
            record["relative_path"] = os.path.relpath(path.resolve(), directory.resolve())
        except ValueError:  # another drive (Windows): no relative path
            pass
        identity["weights_file"] = record
    return config_towers, identity


def resolve_weights_file(recorded: dict, recorded_pretrained: str | None, directory: Path) -> str | None:
    """The local path of the weights file a checkpoint was trained on, ``None`` if it needs no file.

    Raises ``FileNotFoundError`` (one line, listing the places looked at) when no file with the recorded SHA-256
    is found.
    """
    record = recorded.get("weights_file")
    if not isinstance(record, dict):
        return recorded_pretrained  # a tag, random weights, or a checkpoint from before portable references
    name, sha = str(record.get("name", "")), record.get("sha256")
    candidates: list[Path] = []
    if record.get("relative_path"):
        candidates.append(directory / str(record["relative_path"]))
    candidates.append(directory / name)
    for folder in os.environ.get("ADDS_WEIGHTS_PATH", "").split(os.pathsep):
        if folder:
            candidates.append(Path(folder) / name)
    if recorded_pretrained and os.path.isabs(recorded_pretrained):
        candidates.append(Path(recorded_pretrained))
    seen: list[str] = []
    for candidate in candidates:
        if str(candidate) in seen:
            continue
        seen.append(str(candidate))
        if candidate.is_file() and (sha is None or file_sha256(candidate) == sha):
            return str(candidate)
    short = f"{sha[:12]}..." if isinstance(sha, str) else "unknown"
    raise FileNotFoundError(
        f"the checkpoint in {directory} was trained on tower weights {name} (sha256 {short}), not found as "
        f"{', '.join(seen)}: pass its path (--tower-weights; --pretrained for adds tag), or put it next to the "
        f"checkpoint or in a folder of $ADDS_WEIGHTS_PATH"
    )


def local_tower_config(recorded: TowerConfig, pretrained: str | None) -> TowerConfig:
    """A checkpoint's recorded tower config for this machine: the resolved weights (``pretrained``, see
    :func:`resolve_weights_file`), and the recorded ``cache_dir`` only if that folder exists here."""
    cache_dir = recorded.cache_dir if recorded.cache_dir and os.path.isdir(recorded.cache_dir) else None
    return replace(recorded, pretrained=pretrained, cache_dir=cache_dir)


def tower_differences(recorded: dict, towers: Towers) -> list[str]:
    """The identity entries in which ``towers`` differ from a checkpoint's record (empty if they match)."""
    actual = towers.identity()
    if recorded.get("fingerprint_scheme") is None and "fingerprint" in recorded:
        actual["fingerprint"] = towers.legacy_fingerprint()  # a checkpoint written before fingerprint scheme 2
    return [
        f"{key}: checkpoint {recorded.get(key)!r} vs towers {actual.get(key)!r}"
        for key in IDENTITY_KEYS
        if key in recorded and recorded.get(key) != actual.get(key)
    ]
