"""The one metadata schema of saved models (every network), and the conversion of older files.

Schema 2, stored with the weights (safetensors metadata ``phasestem``, and ``meta.json`` beside them)::

    {"schema": 2,
     "model": {"kind": "patch" | "stitch" | "end2end" | "autoencoder" | "phaseformer",
               "config": {...}},            # the network's settings: enough to rebuild it
     "data": {...},                          # what inference must reapply (preprocessing, geometry, shapes)
     "loss": {...},                          # optional: the loss settings it was trained with
     "phasestem_version": "…"}

Older files are converted when read (:func:`normalize_meta`): the patch/stitch/end2end files had this
layout without ``schema``; the autoencoder / Phaseformer files had ``network`` with the settings in
``model`` and the preprocessing at the top level. Nothing has to be rewritten on disk.

The pattern coordinates of a patch network (``model.config.coords``, in an end2end model
``model.config.patch.coords``): ``patch_frame`` since they carry each block's sub-pixel offset; a file
without the key was trained on block-centred coordinates and reads as ``block_centre``, so it is fed
what it was trained on. Likewise a stitching network (``model.config.centres``, in an end2end model
``model.config.stitch.centres``) without the key reads as ``rounded``: three canvas channels, no sub-pixel
offsets.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..base.errors import InputFileError

SCHEMA = 2
KINDS = ("patch", "stitch", "end2end", "autoencoder", "phaseformer")


def make_meta(kind: str, config: dict[str, Any] | BaseModel, data: dict[str, Any] | None = None,
              loss: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata of a ``kind`` network (schema 2); a pydantic ``config`` is stored as its JSON-mode dump."""
    from ..base.version import __version__

    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    meta: dict[str, Any] = {"schema": SCHEMA, "model": {"kind": kind, "config": config}, "data": data or {}}
    if loss is not None:
        meta["loss"] = loss
    meta.update(extra)
    meta["phasestem_version"] = __version__
    return meta


def normalize_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` in schema 2 (a copy when converted; older layouts are recognised, unknown ones returned as is)."""
    if not isinstance(meta, dict):
        return meta
    return _fill_conventions(meta if meta.get("schema") == SCHEMA else _to_schema(meta))


#: the coordinate convention of patch networks saved before ``coords`` was recorded
OLD_COORDS = "block_centre"
#: the bright-centre input of stitching networks saved before ``centres`` was recorded
OLD_CENTRES = "rounded"


def _fill_conventions(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the conventions of older files filled in (a copy if any was missing): ``coords:
    block_centre`` in a patch network's config, ``centres: rounded`` in a stitching network's."""
    kind, model = kind_of(meta), meta.get("model")
    cfg = model.get("config") if isinstance(model, dict) else None
    if not isinstance(cfg, dict):
        return meta
    if kind == "patch":
        new = _with_default(cfg, "coords", OLD_COORDS)
    elif kind == "stitch":
        new = _with_default(cfg, "centres", OLD_CENTRES)
    elif kind == "end2end":
        new = dict(cfg)
        if isinstance(cfg.get("patch"), dict):
            new["patch"] = _with_default(cfg["patch"], "coords", OLD_COORDS)
        if isinstance(cfg.get("stitch"), dict):
            new["stitch"] = _with_default(cfg["stitch"], "centres", OLD_CENTRES)
    else:
        return meta
    if new == cfg:
        return meta
    return {**meta, "model": {**meta["model"], "config": new}}


def _with_default(cfg: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    return cfg if key in cfg else {**cfg, key: value}


def _to_schema(meta: dict[str, Any]) -> dict[str, Any]:
    network = meta.get("network")
    if network in ("autoencoder", "phaseformer") and not _has_kind(meta):
        out = {k: v for k, v in meta.items() if k not in ("network", "model", "preprocess", "pattern_shape")}
        out["schema"] = SCHEMA
        out["model"] = {"kind": network, "config": dict(meta.get("model") or {})}
        data = dict(meta.get("data") or {})
        for key in ("preprocess", "pattern_shape"):
            if key in meta:
                data[key] = meta[key]
        out["data"] = data
        return out
    if _has_kind(meta):
        return {"schema": SCHEMA, **meta}
    return meta


def kind_of(meta: dict[str, Any]) -> str | None:
    """The network kind a (normalised) meta names, or None."""
    m = meta.get("model") if isinstance(meta, dict) else None
    return m.get("kind") if isinstance(m, dict) else None


def require_kind(meta: dict[str, Any], source: Any, kinds: tuple[str, ...] = KINDS) -> str:
    """The kind of ``meta`` if it is one of ``kinds``; otherwise one clear error naming ``source``."""
    kind = kind_of(meta)
    if kind in kinds and isinstance(meta["model"].get("config"), dict):
        return kind
    want = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
    if kind:
        raise InputFileError(f"{source}: not a {want} model written by phasestem train: its metadata names a "
                             f"'{kind}' model (use the {kind} commands)")
    raise InputFileError(f"{source}: not a {want} model written by phasestem train: its metadata names no network "
                         "(phasestem's models of every version are read, older metadata converted on the fly; a "
                         "file of other origin needs the metadata of phasestem.learn.meta.make_meta, written with "
                         "phasestem.learn.trainer.save_weights)")


def _has_kind(meta: dict[str, Any]) -> bool:
    m = meta.get("model")
    return isinstance(m, dict) and "kind" in m and isinstance(m.get("config"), dict)
