"""Model bundles: a trained ensemble as a folder you can hand to a colleague.

::

    <name>/
      model.json            the card: name, version, architecture and input spec, preprocessing
                            with every parameter, channels and contrast, the training cohort
                            (n, ages, sex split, sites), metrics with the baselines on the same
                            folds, bias correction and variance calibration, intended use and
                            the envelope the model is valid for, licence and attribution, and
                            the sha256 of every weight file
      member_<k>.safetensors  one network's weights (float16 by default)
      template.nii.gz       (models that align their input) the alignment template

Weights are safetensors (a JSON header and raw tensor bytes: nothing in the file can run), and
every file's sha256 is checked against the card before it is read; a mismatch or a missing file
is refused in one line. ``bodyage export`` makes a bundle from any trained run and ``bodyage
models verify`` checks one (:mod:`bodyage_core.inference.export`); ``bodyage models list |
show`` and ``--model NAME|DIR`` use :func:`find_model`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bodyage_core.errors import BodyageError

CARD_FORMAT = "bodyage-model/1"
CARD_NAME = "model.json"
_SHA = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
REQUIRED = ("format", "name", "version", "architecture", "input", "members", "bias_correction",
            "calibration", "envelope", "training_cohort", "intended_use", "licence")


# -- reading and verifying ------------------------------------------------------------------

def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The card of a bundle, checked for shape (not yet the weights: :func:`~bodyage_core.inference.export.verify_model`)."""
    from bodyage_core.names import check_name

    model_dir = Path(model_dir)
    path = model_dir / CARD_NAME
    if not path.is_file():
        raise BodyageError(f"not a bodyage model folder (no {CARD_NAME})", path=model_dir,
                           hint="name a model from `bodyage models list` or export a run with "
                                "`bodyage export`")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BodyageError(f"damaged model card ({exc})", path=path,
                           hint="copy or export the model again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise BodyageError(f"not a {CARD_FORMAT} model card", path=path,
                           hint="this model needs another version of bodyage")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise BodyageError(f"model card lacks {', '.join(missing)}", path=path,
                           hint="copy or export the model again")
    check_name(str(card["name"]), "model name")
    members = card["members"]
    if not isinstance(members, list) or not members:
        raise BodyageError("model card lists no members", path=path)
    for m in members:
        f, sha = str(m.get("file", "")), str(m.get("sha256", ""))
        if not _FILE.fullmatch(f) or not _SHA.fullmatch(sha):
            raise BodyageError(f"model card names a member file {f!r} without a valid name or "
                               "sha256", path=path, hint="copy or export the model again")
    return card


def verify_file(path: Path, sha256: str) -> None:
    """Refuse a missing file or one whose sha256 is not the card's."""
    from bodyage_core.inference.weights import sha256_file

    if not path.is_file():
        raise BodyageError("file of the model is missing", path=path,
                           hint="copy the whole model folder again")
    got = sha256_file(path)
    if got != sha256:
        raise BodyageError(f"checksum mismatch (sha256 {got[:12]}... where the model card "
                           f"says {sha256[:12]}...): the file was changed or damaged; refused",
                           path=path, hint="copy or export the model again")


def card_sha(model_dir: str | Path) -> str:
    """sha256 of the card itself: names this exact model in prediction rows."""
    from bodyage_core.inference.weights import sha256_file

    return sha256_file(Path(model_dir) / CARD_NAME)


# -- finding ------------------------------------------------------------------------------

def find_model(name_or_dir: str | Path) -> Path:
    """The folder of a model given by folder path or by name (searched in
    :func:`bodyage_core.resources.model_dirs`)."""
    from bodyage_core import resources
    from bodyage_core.names import check_name

    p = Path(name_or_dir).expanduser()
    if (p / CARD_NAME).is_file():
        return p
    text = str(name_or_dir)
    if "/" in text or "\\" in text or p.exists():
        raise BodyageError(f"not a bodyage model folder (no {CARD_NAME})", path=p,
                           hint="give a model folder or a name from `bodyage models list`")
    check_name(text, "model name")
    for d in resources.model_dirs():
        if (d / text / CARD_NAME).is_file():
            return d / text
    names = ", ".join(sorted({m["name"] for m in list_models()})) or "none"
    raise BodyageError(f"no model named {text!r} (models: {names})",
                       hint="see `bodyage models list`, or give the model's folder")


def list_models() -> list[dict[str, Any]]:
    """Every model found by name: ``{"name", "version", "dir", "where", "card"}`` (the first
    folder that has a name wins; later ones are listed as shadowed)."""
    from bodyage_core import resources

    out, seen = [], set()
    shipped = resources.shipped_models_dir()
    for d in resources.model_dirs():
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if not (sub / CARD_NAME).is_file():
                continue
            try:
                card = read_card(sub)
            except BodyageError as err:
                out.append({"name": sub.name, "version": "?", "dir": sub, "where": str(d),
                            "card": None, "error": str(err)})
                continue
            out.append({"name": card["name"], "version": card["version"], "dir": sub,
                        "where": "shipped" if d == shipped else str(d), "card": card,
                        "shadowed": card["name"] in seen})
            seen.add(card["name"])
    return out


def run_source(ws, run: str) -> Path:
    """Where the ensemble called ``run`` in workspace ``ws`` lives: the workspace's own run
    folder (``models/<run>/``) when there is one, else the model bundle of that name
    (:func:`find_model`), so that a shipped model used with ``predict WS --model NAME`` is then
    ``--run NAME`` for explain, report, atlas maps and the viewer."""
    own = ws.model_dir(run)
    if own.exists():
        return own
    try:
        return find_model(run)
    except BodyageError:
        return own                     # the run's own error (no config.json) names the folder
