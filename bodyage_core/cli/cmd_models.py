"""``bodyage models``: the models bodyage can use by name (shipped, and in the model folders),
their cards, and a check of their files."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list, show and verify the models usable by name",
                       description="Models are found by name in BODYAGE_MODEL_PATH, the user's "
                                   "model folder (~/.local/share/bodyage/models) and the models "
                                   "shipped with bodyage.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="every model found, with its envelope")
    ls.set_defaults(func=_list)
    sh = msub.add_parser("show", help="a model's card")
    sh.add_argument("model", metavar="NAME|DIR")
    sh.add_argument("--json", action="store_true", help="the whole card as JSON")
    sh.set_defaults(func=_show)
    ve = msub.add_parser("verify", help="check every file against the card's sha256 and load "
                                        "the networks")
    ve.add_argument("model", metavar="NAME|DIR")
    ve.set_defaults(func=_verify)


def _list(args: argparse.Namespace) -> int:
    from bodyage_core import resources
    from bodyage_core.inference.bundle import list_models

    models = list_models()
    if not models:
        print("no models found in: " + ", ".join(str(d) for d in resources.model_dirs()))
        return 0
    print(f"{'name':<24} {'version':<8} {'input':<24} {'trained on':<34} where")
    for m in models:
        card = m.get("card")
        if card is None:
            print(f"{m['name']:<24} {'?':<8} damaged: {m.get('error')}")
            continue
        coh = card.get("training_cohort", {})
        age = coh.get("age", {})
        trained = f"n={coh.get('n', '?')}" + (f", ages {age['min']:.0f}-{age['max']:.0f}"
                                              if age else "")
        shadow = " (shadowed)" if m.get("shadowed") else ""
        print(f"{card['name']:<24} {card['version']:<8} "
              f"{'+'.join(card['input']['channels']) + ' ' + card['input']['mode']:<24} "
              f"{trained:<34} {m['where']}{shadow}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from bodyage_core.inference.bundle import card_sha, find_model, read_card

    d = find_model(args.model)
    card = read_card(d)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    coh = card.get("training_cohort", {})
    env = card.get("envelope", {})
    met = card.get("metrics", {})
    print(f"{card['name']} {card['version']}  ({d})")
    print(f"  sha256 of model.json  {card_sha(d)}")
    print(f"  {card.get('description', '')}")
    print(f"  input        {card.get('contrast', '')}: {card['input']['channels']}, "
          f"{card['input']['mode']} grid {card['input'].get('shape_zyx')} at "
          f"{card['input'].get('spacing_zyx')} mm (z, y, x)")
    print(f"  members      {len(card['members'])} ({card['architecture'].get('arch')} width "
          f"{card['architecture'].get('width')}), weights {card.get('weights_dtype', '?')}")
    print(f"  trained on   n={coh.get('n')}, ages {coh.get('age', {})}, sex {coh.get('sex')}, "
          f"sites {coh.get('sites')}")
    if coh.get("description"):
        print(f"               {coh['description']}")
    for name, m in (met or {}).items():
        if isinstance(m, dict) and m:
            print(f"  metrics      {name}: {json.dumps(m, default=str)[:300]}")
    print(f"  envelope     {json.dumps(env)}")
    print(f"  intended use {card.get('intended_use')}")
    print(f"  licence      {card.get('licence')}")
    if card.get("attribution"):
        print(f"  attribution  {card['attribution']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from bodyage_core.inference.bundle import find_model
    from bodyage_core.inference.export import verify_model

    d = find_model(args.model)
    for line in verify_model(d):
        print(line)
    print(f"{d}: verified")
    return 0
