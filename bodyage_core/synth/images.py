"""The phantom's water and fat images from its painted label map: each organ's Dixon signal
(``anatomy.TISSUE_SIGNAL``) modulated per subject (muscle and marrow fat fractions, disc
hydration, textures), the heart's blood pool, femur marrow, the knee joint space and the discs
with sub-voxel partial volume along z, then a slight blur (point spread), a smooth bias field
with per-station gain steps, and Rician noise. Integer-valued like scanner data."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bodyage_core.synth.anatomy import INTENSITY_SCALE, LABEL_IDS, TISSUE_SIGNAL
from bodyage_core.synth.canvas import Region, smooth_noise
from bodyage_core.synth.grid import SynthGrid
from bodyage_core.synth.params import SITES, SubjectParams

L = LABEL_IDS


def tissue_signal(name: str, jitter: float) -> tuple[float, float]:
    """Water and fat signal of a tissue, scaled by the subject's signal jitter."""
    w, f = TISSUE_SIGNAL[name]
    return w * (1 + jitter), f * (1 + jitter)


def dixon_images(p: SubjectParams, g: SynthGrid, labels: np.ndarray, rng: np.random.Generator,
                 *, pool: Region | None, marrow_regions: list, joint_regions: list,
                 disc_frac: tuple | None, js: float, z_knee: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(water, fat)`` float32 arrays on ``g`` for the painted ``labels``. ``pool``: the
    heart's blood pool; ``marrow_regions`` / ``joint_regions``: femur marrow and knee joint
    regions; ``disc_frac``: the discs' partial-volume fractions; ``js``: the knee joint space
    (mm) at ``z_knee``. Draws from ``rng`` (textures, bias field, noise) in a fixed order."""
    an = p.anatomy
    ev = p.effect_values
    sp_e, bm_e, thigh = ev["spine"], ev["back_muscle"], ev["thigh_muscle"]
    bmi = p.bmi
    xs, ys, zs = g.axes()
    jit = an["signal"]
    lut_w = np.zeros(256, np.float32)
    lut_f = np.zeros(256, np.float32)
    for name, i in L.items():
        w, f = tissue_signal(name, jit)
        lut_w[i], lut_f[i] = w, f
    water = lut_w[labels]
    fatimg = lut_f[labels]
    spc_zyx = (g.spacing[2], g.spacing[1], g.spacing[0])
    tex_m = smooth_noise(rng, g.shape, spc_zyx, 12.0)

    def set_ff(mask, ff, w_pure, f_pure=0.95, hetero=0.6):
        ffl = np.clip(ff * (1 + hetero * tex_m[mask]), 0.0, 0.95)
        water[mask] = w_pure * (1 + jit) * (1 - ffl)
        fatimg[mask] = f_pure * (1 + jit) * ffl

    other_ff = 0.04 + 0.002 * (bmi - 25) + 0.01 * (p.sex == "F")
    set_ff(labels == L["other_muscle"], max(other_ff, 0.02), 0.6)
    set_ff(labels == L["back_muscles"], bm_e["ff"], 0.6)
    set_ff(labels == L["thigh_muscles"], thigh["ff"], 0.6)
    set_ff(labels == L["vertebrae"], sp_e["marrow_ff"], 0.6, hetero=0.15)
    set_ff(labels == L["pelvis"], 0.6, 0.55, hetero=0.1)
    liv_ff = ev["liver"]["ff"]
    set_ff(labels == L["liver"], liv_ff, 0.47, hetero=0.1)
    soft = labels == L["soft_tissue"]
    water[soft] *= 1 + 0.25 * tex_m[soft]
    fatimg[soft] *= np.clip(1 + 0.8 * tex_m[soft], 0.2, None)
    # heart blood pool
    if pool is not None:
        sl, m = pool
        m = m & (labels[sl] == L["heart"])
        water[sl][m] = 0.72 * (1 + jit)
    # femur marrow (fatty)
    for reg in marrow_regions:
        if reg is None:
            continue
        sl, m = reg
        m = m & (labels[sl] == L["femur"])
        water[sl][m] = 0.08
        fatimg[sl][m] = 0.82
    # knee: fatty condyle marrow, water-bright joint space with partial volume along z
    kmask = labels == L["knee"]
    water[kmask] = 0.55 * 0.2
    fatimg[kmask] = 0.95 * 0.8
    for reg in joint_regions:
        if reg is None:
            continue
        sl, m = reg
        m = m & (labels[sl] == L["knee"])
        zc = zs[sl[0]].astype(np.float64)
        dz = g.spacing[2]
        ov = np.clip(np.minimum(zc + dz / 2, z_knee + js / 2) - np.maximum(zc - dz / 2,
                                                                          z_knee - js / 2), 0, None)
        fj = np.broadcast_to((ov / dz)[:, None, None], m.shape)
        wv, fv = water[sl], fatimg[sl]
        wv[m] = (fj * 0.62 + (1 - fj) * wv)[m]
        fv[m] = (fj * 0.04 + (1 - fj) * fv)[m]
    # discs: water-bright, dehydrating with age, partial volume with the vertebral marrow
    if disc_frac is not None:
        sl, fr = disc_frac
        m = fr > 0
        wd = 0.85 * sp_e["disc_water_factor"] * (1 + jit)
        fd = 0.02
        wv, fv = water[sl], fatimg[sl]
        marrow_w = 0.6 * (1 + jit) * (1 - sp_e["marrow_ff"])
        marrow_f = 0.95 * (1 + jit) * sp_e["marrow_ff"]
        wv[m] = (fr * wd + (1 - fr) * marrow_w)[m]
        fv[m] = (fr * fd + (1 - fr) * marrow_f)[m]

    # point spread, bias field with station steps, Rician noise
    sig = (0.45, 0.5, 0.5)
    water = ndimage.gaussian_filter(water, sig, mode="nearest")
    fatimg = ndimage.gaussian_filter(fatimg, sig, mode="nearest")
    noise_sd, bias_sd = SITES[p.site]
    c = rng.normal(0.0, bias_sd, 8)
    xn = (xs / 250.0)[None, None, :]
    yn = (ys / 200.0)[None, :, None]
    zn = (zs / 555.0)[:, None, None]
    logb = (c[0] * xn + c[1] * yn + c[2] * zn + c[3] * xn * xn + c[4] * yn * yn
            + c[5] * zn * zn + c[6] * xn * zn + c[7] * yn * zn).astype(np.float32)
    # six acquisition stations (as UK Biobank), each with its own gain, blended at overlaps
    st_edges = np.linspace(zs[0], zs[-1], 7)
    st_mid = 0.5 * (st_edges[:-1] + st_edges[1:])
    gains = rng.normal(0.0, 0.04, 6)
    logb = logb + np.interp(zs, st_mid, gains).astype(np.float32)[:, None, None]
    bias = np.exp(logb)
    sd = noise_sd
    out = []
    for img in (water, fatimg):
        img = img * bias
        n1 = rng.standard_normal(img.shape, dtype=np.float32)
        n2 = rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2)
        # integer-valued like scanner data (stored as uint16 on disk, float32 in memory)
        out.append(np.clip(np.rint(img * INTENSITY_SCALE), 0, 65535).astype(np.float32))
    water, fatimg = out
    return water, fatimg
