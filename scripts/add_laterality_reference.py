"""Add the QC score's laterality statistics to a shipped model whose QC reference was made
before they existed (:func:`bodyage_core.inference.export.add_laterality_reference`): weights
and feature statistics untouched, ``ood.safetensors`` and the card's sha256 of it rewritten.
A model trained now gets them when its run finishes; this is for the bundles made before.

The statistics come from the model's own training set, prepared as the model prepares it:

* ``wholebody``: subjects 0..N-1 of the synthetic training cohort (``bodyage synth --seed 20``;
  subject i of a seed is always the same person), regenerated into WORK;
* ``brain``: the 141 IXI T1 brains in ``../shared/data/ixi_t1_2mm`` it was trained on.

::

    .venv/bin/python scripts/add_laterality_reference.py wholebody|brain [--n 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
MODELS = {"wholebody": "wholebody-synthetic", "brain": "brain-t1-ixi"}


def _inputs(what: str, run, n: int, work: Path):
    from bodyage_core.io import load_channels, load_volume
    from bodyage_core.preprocess.spec import prepare_model_input

    if what == "wholebody":
        from bodyage_core.synth.cohort import generate_cohort

        ids = generate_cohort(work / "wb_train_lat", n, seed=20, register=False)
        for sid in ids:
            d = work / "wb_train_lat" / "subjects" / sid
            v = load_channels({"water": d / "water.nii.gz", "fat": d / "fat.nii.gz"})
            mi = prepare_model_input(v, run.spec)
            yield mi.array, mi.affine
    else:
        files = sorted((DATA / "ixi_t1_2mm" / "t1").glob("*.nii.gz"))[:n]
        for f in files:
            v = load_volume(f)
            mi = prepare_model_input(v.with_data(np.asarray(v.data), channels=("t1",)),
                                     run.spec)
            yield mi.array, mi.affine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=sorted(MODELS))
    ap.add_argument("--n", type=int, default=None,
                    help="reference subjects (default: 200 synthetic / all IXI brains)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "_work"))
    args = ap.parse_args(argv)
    from bodyage_core.inference import ood
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.inference.export import add_laterality_reference

    model_dir = ROOT / "resources" / "models" / MODELS[args.what]
    n = args.n or (200 if args.what == "wholebody" else 10_000)
    t0 = time.perf_counter()
    run = AgeRun(model_dir, device="cpu")
    inputs = list(_inputs(args.what, run, n, Path(args.work)))
    lat = add_laterality_reference(model_dir, inputs)
    print(f"{MODELS[args.what]}: laterality reference of {lat['n']} subjects, separation "
          f"{ood.separation(lat):.1f} SD (weight {ood._lat_weight(ood.separation(lat)):.2f}), "
          f"flag from z {ood.lat_threshold(lat):.1f}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
