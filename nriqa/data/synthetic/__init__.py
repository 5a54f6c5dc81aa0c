"""The embedded default dataset: KADID-10k's distortions of photos bundled in installed packages.

``nriqa train`` with no dataset named trains on this dataset (all 18 types); ``nriqa demo`` on its
``artefacts`` set, KADID's 9 blur, noise and compression types (:data:`DISTORTION_SETS`). It needs no
download: it is generated on the user's machine from natural photos that ship inside the
scikit-image, scikit-learn and matplotlib wheels, and labelled with human opinion measured on
KADID-10k (Lin, Hosu and Saupe, QoMEX 2019). Design, grounding and limits: docs/embedded_dataset.md.

References (content groups, :data:`REFERENCES`)
    Every natural photo those wheels bundle: scikit-image's ``astronaut``, ``coffee``,
    ``chelsea`` (a cat), ``rocket``, ``motorcycle`` (the left view of ``stereo_motorcycle``),
    ``immunohistochemistry`` (a stained micrograph), ``retina`` (the central square of the fundus
    photo) and ``hubble_deep_field``; scikit-learn's ``china`` and ``flower``; matplotlib's
    ``grace_hopper``; and scikit-image's grayscale photos (:data:`GRAYSCALE`: ``camera``,
    ``moon``, ``coins``, ``cell``, ``brick``, ``grass``, ``gravel``), which are not given KADID's
    colour-only distortions (:data:`COLOUR_ONLY`). The official split (``split`` column,
    :func:`official_part`) holds out the test photos ``flower``, ``hubble_deep_field`` and
    ``immunohistochemistry`` and the validation photos ``astronaut`` and ``china``. Each photo is
    scaled (PIL bicubic) to cover KADID's 4:3 frame and centre-cropped to it: ``size`` x 4/3 ``size`` pixels (default 384 x 512, KADID's size), in its own
    orientation. A reference that an installed version no longer bundles is skipped with a
    warning; the manifest records which references were used.

Distortions (:data:`KADID_TYPES`, five levels each, level 1 mildest)
    18 of KADID-10k's 25 types, each with KADID's five level parameters (reconstructed from the
    dataset's published generation code; the units are listed in :data:`KADID_TYPES`): three
    blurs, colour diffusion, colour quantization, Lab saturation, JPEG 2000, JPEG, four noises,
    brighten, darken, pixelate, quantization, colour blocks, high sharpen. Each function maps
    ``(uint8 HxWx3 image, level 1..5, numpy Generator) -> uint8 HxWx3 image`` and draws all its
    randomness from the generator. The builder seeds it from ``(seed, reference, distortion)`` and
    restarts it for every level (common random numbers: the same noise pattern, motion angle and
    block places at every level of one image, so severity is the only thing that changes).

Label
    ``score`` is the mean human score KADID-10k's raters gave to that distortion type at that
    level (:data:`KADID_MEANS`, over 81 references, 1..5), mapped to [0, 1] by ``(mean - 1) / 4``;
    higher is better. It is the same function of the level for every reference, and falls with the
    level for every type used (the types whose KADID means do not fall are left out). It does not
    depend on the photo: a blind model has to recognise the distortion and its strength on any
    content, which is what makes it learnable from a few references. Limits: the label is KADID's
    average over other photos, not a rating of these images; the distortions are reconstructions
    of KADID's, so a level may look somewhat milder or stronger than KADID's; and one label per
    (type, level) means a model can do well without judging content-dependent visibility.

Layout of a built dataset (``build_embedded``)::

    <root>/refs/<ref>.png                       the references in KADID's frame
    <root>/images/<ref>_<dist>_<level>.png      the distorted images
    <root>/labels.csv                           path,score,group,dist_type,level,ref_path,split
    <root>/manifest.json                        parameters, references, versions, hashes

``path`` and ``ref_path`` are relative to the root; ``group`` is the reference name. The build
happens in a temporary sibling directory that is renamed into place once complete (manifest
last), so concurrent builders never see a half-written dataset and an interrupted build leaves
nothing that passes for complete. A cached build is reused only when its manifest matches the
parameters, the hash of this package's source (so a changed recipe rebuilds) and the hash of
labels.csv, and every listed image exists. Builds are deterministic for a seed in a given environment:
the same bytes twice. (Other versions of Pillow, its codecs or scikit-image may change pixels;
the manifest records the versions.)

Modules: :mod:`.calibration` (KADID-10k's mean scores), :mod:`.distortions`, :mod:`.references`
and :mod:`.build` (building and caching). The label table of a built dataset is read like any
other dataset's: ``load_labels("embedded", root)`` (:mod:`nriqa.data.datasets.embedded`).
"""

from nriqa.data.synthetic.build import (
    FORMAT_VERSION,
    LABEL_COLUMNS,
    applies,
    build_embedded,
    cache_root,
    embedded_dir,
    image_count,
    is_built,
    severities,
)
from nriqa.data.synthetic.calibration import (
    KADID_CATEGORIES,
    KADID_MEANS,
    KADID_SCALE,
    KADID_TYPE_NAMES,
    LABEL_SCALE,
    N_LEVELS,
)
from nriqa.data.synthetic.distortions import (
    ARTEFACT_CATEGORIES,
    COLOUR_ONLY,
    DISTORTION_SETS,
    DISTORTIONS,
    KADID_TYPES,
    KadidType,
    kadid_label,
    resolve_distortions,
)
from nriqa.data.synthetic.references import (
    DEFAULT_SIZE,
    GRAYSCALE,
    REFERENCES,
    TEST_PHOTOS,
    VAL_PHOTOS,
    load_reference,
    official_part,
    reference_shape,
)

__all__ = [
    "ARTEFACT_CATEGORIES", "COLOUR_ONLY", "GRAYSCALE", "TEST_PHOTOS", "VAL_PHOTOS", "applies",
    "image_count", "official_part", "DEFAULT_SIZE", "DISTORTIONS", "DISTORTION_SETS", "FORMAT_VERSION",
    "KADID_CATEGORIES", "KADID_MEANS", "KADID_SCALE", "KADID_TYPES",
    "KADID_TYPE_NAMES", "LABEL_COLUMNS", "LABEL_SCALE", "N_LEVELS", "REFERENCES", "KadidType",
    "build_embedded", "cache_root", "embedded_dir", "is_built", "kadid_label", "load_reference",
    "reference_shape", "resolve_distortions", "severities",
]
