"""The synthetic sky behind the FITS products: targets, their redshifts and their spectra.

A coadd and the redrock file next to it must describe the same objects (the redshift of a
spectrum is where its lines are), and the zcatalog must list them too, so targets are a pure
function of (seed, group, count): the directory of a coadd is its group, and every product
that names the group gets the same targets back.

Spectra are plausible, not physical: a smooth continuum with the strong lines of the
object's class at its redshift (emission for galaxies and quasars, absorption for stars),
Gaussian noise and the inverse variance that goes with it, and a Gaussian resolution
matrix of 11 diagonals as DESI stores them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Arm -> (first, last) wavelength in Å: DESI's ranges, at a coarser step (DESI: 0.8 Å)
#: so that a coadd of a few spectra stays a few MB.
ARMS = {"B": (3600.0, 5800.0), "R": (5760.0, 7620.0), "Z": (7520.0, 9824.0)}
WAVE_STEP = 2.0
NDIAG = 11

#: Rest-frame lines in Å: (wavelength, relative strength, width in Å).
GALAXY_LINES = ((3727.4, 1.0, 2.5), (4862.7, 0.5, 2.5), (5008.2, 0.8, 2.5), (6564.6, 1.4, 2.5))
QSO_LINES = ((1215.7, 3.0, 20.0), (1549.5, 1.2, 25.0), (1908.7, 0.6, 25.0), (2799.1, 0.8, 30.0))
STAR_LINES = ((3934.8, -0.5, 4.0), (3969.6, -0.4, 4.0), (4862.7, -0.4, 6.0), (6564.6, -0.5, 6.0))
SPECTYPES = ("GALAXY", "QSO", "STAR")
FIRST_TARGETID = 39627000000000000


def wavelength(arm: str) -> np.ndarray:
    first, last = ARMS[arm]
    return np.arange(first, last + WAVE_STEP / 2, WAVE_STEP)


@dataclass(frozen=True)
class Targets:
    """``n`` objects of one group: identifiers, positions, photometry and redshifts."""

    targetid: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    zerr: np.ndarray
    spectype: np.ndarray  # str, one of SPECTYPES
    flux_grz: np.ndarray  # (n, 3) nanomaggies
    desi_target: np.ndarray
    amplitude: np.ndarray  # continuum level, 1e-17 erg/s/cm2/Å

    def __len__(self) -> int:
        return len(self.targetid)


def _group_number(group: str) -> int:
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big")


def targets(seed: int, group: str, n: int) -> Targets:
    """The ``n`` targets of ``group``: the same for every product that names the group."""
    number = _group_number(group)
    rng = np.random.default_rng([seed, number])
    kind = rng.choice(len(SPECTYPES), n, p=(0.6, 0.25, 0.15))
    z = np.where(
        kind == 0,
        rng.uniform(0.05, 1.5, n),
        np.where(kind == 1, rng.uniform(0.6, 3.5, n), rng.normal(0.0, 1e-4, n)),
    )
    ra0, dec0 = number % 36000 / 100.0, (number // 36000) % 14000 / 100.0 - 20.0
    flux = rng.lognormal(0.5, 0.8, (n, 3)).astype("f4")
    bits = np.array([2**1, 2**2, 2**60])[kind]  # ELG, QSO, MWS_ANY: bits of DESI_TARGET
    return Targets(
        targetid=FIRST_TARGETID + (number % 10**8) * 10**4 + np.arange(n, dtype="i8"),
        ra=(ra0 + rng.uniform(-0.5, 0.5, n)) % 360.0,
        dec=np.clip(dec0 + rng.uniform(-0.5, 0.5, n), -89.9, 89.9),
        z=z,
        zerr=np.abs(rng.normal(0, 1e-4, n)) * (1 + z),
        spectype=np.array(SPECTYPES)[kind],
        flux_grz=flux,
        desi_target=bits.astype("i8"),
        amplitude=rng.uniform(0.5, 3.0, n),
    )


def _lines(spectype: str) -> tuple[tuple[float, float, float], ...]:
    return {"GALAXY": GALAXY_LINES, "QSO": QSO_LINES, "STAR": STAR_LINES}[spectype]


def model_flux(wave: np.ndarray, z: float, spectype: str, amplitude: float) -> np.ndarray:
    """Noise-free flux: a continuum and the class's lines redshifted by ``z``."""
    x = wave / 5500.0
    if spectype == "QSO":
        continuum = amplitude * x**-1.5
    elif spectype == "STAR":
        continuum = amplitude * 1.5 * x**-2 * np.exp(-0.5 / x)
    else:  # a galaxy: red, with a break at 4000 Å rest frame
        continuum = amplitude * (0.6 + 0.4 * (wave > 4000 * (1 + z))) * x**0.5
    flux = continuum.copy()
    for rest, strength, width in _lines(spectype):
        center, sigma = rest * (1 + z), width * (1 + z)
        flux += strength * 4 * amplitude * np.exp(-0.5 * ((wave - center) / sigma) ** 2)
    return flux


def observe(t: Targets, arm: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Flux, ivar, mask and resolution of every target in one arm, as a coadd holds them."""
    wave = wavelength(arm)
    n, nwave = len(t), len(wave)
    sigma = rng.uniform(0.3, 1.0, (n, 1)) * np.ones((1, nwave))
    flux = np.empty((n, nwave), "f4")
    for i in range(n):
        flux[i] = model_flux(wave, t.z[i], t.spectype[i], t.amplitude[i])
    flux += rng.normal(0.0, 1.0, (n, nwave)).astype("f4") * sigma
    offsets = np.arange(NDIAG) - NDIAG // 2
    kernel = np.exp(-0.5 * (offsets / 1.2) ** 2)
    resolution = np.broadcast_to((kernel / kernel.sum())[None, :, None], (n, NDIAG, nwave))
    return {
        "WAVELENGTH": wave,
        "FLUX": flux,
        "IVAR": (1.0 / sigma**2).astype("f4"),
        "MASK": np.zeros((n, nwave), "u4"),
        "RESOLUTION": np.ascontiguousarray(resolution, "f4"),
    }
