"""Human-opinion calibration of the embedded dataset: KADID-10k's mean score per distortion type
and level, and the label scale it is mapped to."""

from __future__ import annotations

from nriqa.data.table import Scale

N_LEVELS = 5  # KADID-10k's levels per distortion type
LABEL_SCALE = Scale(0.0, 1.0, True)

#: KADID-10k's 25 distortion types, by its type number (image ``Irr_TT_ll.png``).
KADID_TYPE_NAMES: dict[int, str] = {
    1: "Gaussian blur", 2: "lens blur", 3: "motion blur", 4: "color diffusion", 5: "color shift",
    6: "color quantization", 7: "color saturation 1 (HSV)", 8: "color saturation 2 (Lab)",
    9: "JPEG2000", 10: "JPEG", 11: "white noise", 12: "white noise in color component",
    13: "impulse noise", 14: "multiplicative noise", 15: "denoise", 16: "brighten", 17: "darken",
    18: "mean shift", 19: "jitter", 20: "non-eccentricity patch", 21: "pixelate",
    22: "quantization", 23: "color block", 24: "high sharpen", 25: "contrast change",
}

#: Mean KADID-10k score (1..5, higher = better; KADID calls it DMOS) of each type at levels 1..5,
#: over its 81 references (30 raters per image). A fact about the published labels, recomputed by
#: ``python benchmarks/kadid_table.py`` from KADID's label file (not part of nriqa).
KADID_MEANS: dict[int, tuple[float, ...]] = {
    1: (4.612, 4.382, 2.911, 1.873, 1.303),
    2: (3.862, 2.654, 1.756, 1.442, 1.299),
    3: (4.604, 4.095, 2.848, 2.175, 1.668),
    4: (4.495, 2.602, 1.756, 1.605, 1.394),
    5: (4.227, 2.545, 1.916, 1.854, 1.864),
    6: (4.108, 3.973, 3.719, 3.203, 2.425),
    7: (2.746, 2.335, 2.262, 2.243, 2.027),
    8: (4.580, 3.330, 2.648, 1.816, 1.525),
    9: (4.553, 4.205, 3.873, 2.445, 1.394),
    10: (4.338, 4.246, 3.866, 1.945, 1.350),
    11: (3.893, 3.390, 3.045, 2.710, 2.301),
    12: (4.468, 3.682, 3.170, 2.687, 2.380),
    13: (3.584, 2.930, 2.613, 2.312, 2.132),
    14: (4.404, 3.581, 3.084, 2.639, 2.117),
    15: (3.668, 2.727, 2.203, 1.655, 1.467),
    16: (4.506, 4.288, 3.632, 2.701, 1.809),
    17: (4.600, 4.528, 4.231, 3.535, 2.221),
    18: (4.218, 4.519, 4.603, 4.370, 3.903),
    19: (4.419, 4.086, 3.235, 1.849, 1.339),
    20: (4.333, 3.938, 3.773, 3.464, 3.261),
    21: (3.889, 3.098, 2.900, 2.794, 1.496),
    22: (4.169, 3.933, 3.686, 3.373, 2.799),
    23: (2.687, 2.359, 2.300, 2.126, 2.035),
    24: (3.579, 2.636, 2.136, 1.613, 1.336),
    25: (3.419, 3.858, 4.290, 4.141, 3.324),
}

KADID_SCALE = (1.0, 5.0)

#: KADID-10k's grouping of its 25 types into seven categories (as its paper lists them).
KADID_CATEGORIES: dict[str, tuple[int, ...]] = {
    "blur": (1, 2, 3),
    "color": (4, 5, 6, 7, 8),
    "compression": (9, 10),
    "noise": (11, 12, 13, 14, 15),
    "brightness": (16, 17, 18),
    "spatial": (19, 20, 21, 22, 23),
    "sharpness and contrast": (24, 25),
}
