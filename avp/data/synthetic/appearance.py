"""Subject appearance: skin tone and texture, eye, brow, lip and hair colours, and the features a subject has
(hair style, beard, thick brows, glasses). Colours are linear-ish sRGB in 0..1 (what the renderer outputs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# light to deep skin tones (sRGB), interpolated
SKIN_TONES = np.array([
    [0.96, 0.82, 0.72], [0.92, 0.74, 0.62], [0.84, 0.64, 0.50], [0.74, 0.53, 0.39],
    [0.60, 0.41, 0.29], [0.45, 0.30, 0.21], [0.32, 0.21, 0.15],
])
HAIR_COLOURS = {
    "black": [0.05, 0.045, 0.04], "dark_brown": [0.16, 0.10, 0.06], "brown": [0.32, 0.20, 0.11],
    "auburn": [0.45, 0.18, 0.08], "blonde": [0.78, 0.64, 0.40], "grey": [0.62, 0.61, 0.60],
    "white": [0.88, 0.87, 0.85], "dyed_blue": [0.15, 0.25, 0.55], "dyed_pink": [0.80, 0.38, 0.55],
}
HAIR_COLOUR_P = {"black": 0.26, "dark_brown": 0.24, "brown": 0.17, "auburn": 0.07, "blonde": 0.12, "grey": 0.07,
                 "white": 0.03, "dyed_blue": 0.02, "dyed_pink": 0.02}
EYE_COLOURS = {"brown": [0.30, 0.17, 0.08], "dark_brown": [0.16, 0.09, 0.05], "hazel": [0.45, 0.35, 0.15],
               "green": [0.28, 0.42, 0.22], "blue": [0.28, 0.45, 0.68], "grey": [0.45, 0.50, 0.55]}
EYE_COLOUR_P = {"brown": 0.35, "dark_brown": 0.25, "hazel": 0.12, "green": 0.08, "blue": 0.14, "grey": 0.06}
HAIR_STYLES = ("short", "long", "bun", "ponytail", "curly", "bald")
HAIR_STYLE_P = (0.30, 0.20, 0.09, 0.08, 0.15, 0.18)
BEARDS = ("none", "stubble", "moustache", "goatee", "full")
BEARD_P = (0.55, 0.13, 0.10, 0.08, 0.14)
GLASSES_COLOURS = ([0.04, 0.04, 0.05], [0.35, 0.22, 0.12], [0.70, 0.70, 0.72], [0.55, 0.10, 0.12],
                   [0.10, 0.20, 0.45])


def _pick(rng: np.random.Generator, options: dict[str, list[float]] | tuple, p: dict | tuple) -> str:
    names = list(options)
    probs = np.array([p[n] for n in names] if isinstance(p, dict) else p, dtype=np.float64)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


@dataclass
class Appearance:
    """Everything about a subject's look that is not head shape."""

    skin: np.ndarray
    """``[3]`` base skin colour."""
    skin_noise: float
    """Amplitude of the low-frequency skin texture."""
    noise_freqs: np.ndarray
    """``[M, 3]`` spatial frequencies (1/m) of the skin texture's sinusoids."""
    noise_phases: np.ndarray
    """``[M]``"""
    noise_tints: np.ndarray
    """``[M, 3]`` colour direction of each sinusoid."""
    blush: float
    """Redness added on the cheeks."""
    freckles: float
    """Fraction of skin points darkened as freckles/pores."""
    eye: np.ndarray
    eye_name: str
    brow: np.ndarray
    lip: np.ndarray
    hair: np.ndarray
    hair_name: str
    hair_style: str
    beard: str
    thick_brows: bool
    glasses: bool
    glasses_colour: np.ndarray
    hair_thickness: float
    """Hair volume depth in metres (style-dependent)."""
    hairline: float
    """Height of the frontal hairline (y, metres, canonical space)."""

    def summary(self) -> dict:
        return {"hair": self.hair_style, "hair_colour": self.hair_name, "beard": self.beard, "glasses": self.glasses,
                "thick_brows": self.thick_brows, "eyes": self.eye_name,
                "skin": [round(float(c), 3) for c in self.skin]}


MAX_HAIR_THICKNESS = 0.05
"""Thickest hair volume (metres): curly hair's own maximum, inside the head model's hair margin on every side."""


def sample_appearance(rng: np.random.Generator, hair_volume: float = 1.0) -> Appearance:
    """A subject's appearance. ``hair_volume`` scales the hair's depth off the scalp (and the long curtain's), up to
    :data:`MAX_HAIR_THICKNESS`; 1 is the default look, larger values give the voluminous hair of real captures that
    a template surface cannot reach. The random draws do not depend on it."""
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(np.floor(tone))
    hi = min(lo + 1, len(SKIN_TONES) - 1)
    skin = SKIN_TONES[lo] * (1 - (tone - lo)) + SKIN_TONES[hi] * (tone - lo)
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1)
    hair_name = _pick(rng, HAIR_COLOURS, HAIR_COLOUR_P)
    if tone > 4.0 and hair_name in ("blonde", "auburn") and rng.random() < 0.7:
        hair_name = "black"
    hair = np.clip(np.array(HAIR_COLOURS[hair_name]) * rng.uniform(0.85, 1.15), 0, 1)
    eye_name = _pick(rng, EYE_COLOURS, EYE_COLOUR_P)
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=np.array(HAIR_STYLE_P) / sum(HAIR_STYLE_P)))]
    beard = BEARDS[int(rng.choice(len(BEARDS), p=np.array(BEARD_P) / sum(BEARD_P)))]
    brow = np.clip(hair * 0.8 if hair_name not in ("grey", "white", "dyed_blue", "dyed_pink") else
                   np.array(HAIR_COLOURS["dark_brown"]) * rng.uniform(0.8, 1.5), 0, 1)
    lip = np.clip(skin * np.array([0.92, 0.62, 0.62]) + rng.normal(0, 0.03, 3) + np.array([0.05, 0.0, 0.0]), 0, 1)
    thickness = {"short": rng.uniform(0.006, 0.016), "long": rng.uniform(0.010, 0.022),
                 "bun": rng.uniform(0.004, 0.010), "ponytail": rng.uniform(0.004, 0.010),
                 "curly": rng.uniform(0.025, 0.050), "bald": 0.0}[style]
    thickness = min(thickness * hair_volume, MAX_HAIR_THICKNESS)
    return Appearance(
        skin=skin, skin_noise=float(rng.uniform(0.02, 0.06)),
        noise_freqs=rng.normal(0, 1, (6, 3)) * rng.uniform(8, 40, (6, 1)),
        noise_phases=rng.uniform(0, 2 * np.pi, 6), noise_tints=rng.normal(0, 1, (6, 3)) * 0.35 + 1.0,
        blush=float(rng.uniform(0.0, 0.08)), freckles=float(rng.choice([0.0, 0.0, 0.03, 0.08])),
        eye=np.array(EYE_COLOURS[eye_name]) * rng.uniform(0.85, 1.15), eye_name=eye_name, brow=brow, lip=lip,
        hair=hair, hair_name=hair_name, hair_style=style, beard=beard, thick_brows=bool(rng.random() < 0.25),
        glasses=bool(rng.random() < 0.3),
        glasses_colour=np.array(GLASSES_COLOURS[int(rng.integers(len(GLASSES_COLOURS)))]),
        hair_thickness=float(thickness), hairline=float(rng.uniform(0.055, 0.085)),
    )


def skin_colour(app: Appearance, points: np.ndarray, rng: np.random.Generator,
                cheek_weight: np.ndarray | None = None) -> np.ndarray:
    """``points [N, 3]`` -> ``[N, 3]`` skin colour with texture, optional blush and freckles."""
    field = np.sin(points @ app.noise_freqs.T + app.noise_phases)  # [N, M]
    tint = field @ app.noise_tints / len(app.noise_phases)  # [N, 3]
    col = app.skin * (1 + app.skin_noise * tint) + rng.normal(0, 0.012, (len(points), 3))
    if cheek_weight is not None:
        col = col + app.blush * cheek_weight[:, None] * np.array([0.6, -0.2, -0.2])
    if app.freckles > 0:
        spots = rng.random(len(points)) < app.freckles
        col[spots] *= rng.uniform(0.75, 0.9, (int(spots.sum()), 1))
    return np.clip(col, 0.0, 1.0)


def hair_colour(app: Appearance, n: int, rng: np.random.Generator) -> np.ndarray:
    """Strand-to-strand variation around the subject's hair colour: ``[n, 3]``."""
    lum = rng.normal(1.0, 0.12, (n, 1))
    return np.clip(app.hair * lum + rng.normal(0, 0.015, (n, 3)), 0.0, 1.0)
