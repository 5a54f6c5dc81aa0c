"""Naming rules more than one dataset follows: file stems, split words, numbered types."""

from __future__ import annotations

from pathlib import PurePosixPath

_SPLIT_WORDS = {
    "training": "train", "train": "train", "validation": "val", "valid": "val", "val": "val",
    "testing": "test", "test": "test", "": "",
}


def stem(name: str) -> str:
    return PurePosixPath(str(name).strip().replace("\\", "/")).stem


def split_word(value: str) -> str:
    """training/validation/testing and friends as train/val/test; other part names kept."""
    word = str(value).strip().lower()
    return _SPLIT_WORDS.get(word, word)


def indexed_type(name: str) -> str:
    # TID2013 i01_17_3.bmp and KADID I01_17_03.png: the second field numbers the distortion.
    parts = stem(name).split("_")
    return parts[1] if len(parts) >= 3 else ""
