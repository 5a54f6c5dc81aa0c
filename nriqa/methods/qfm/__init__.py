"""QFM-IQM (Li et al., ICML 2024): the method (:mod:`.method`), its feature memory
(:mod:`.memory`), Semantic Noisy Matching (:mod:`.matching`) and its frozen teacher
(:mod:`.teacher`)."""

from nriqa.methods.qfm.matching import RULES, Match, match
from nriqa.methods.qfm.memory import (
    MAX_DEFAULT_CAPACITY,
    SOURCE_PSEUDO,
    SOURCE_STUDENT,
    SOURCE_TEACHER,
    Entries,
    FeatureMemory,
    default_capacity,
    stack_entries,
)
from nriqa.methods.qfm.method import ABLATIONS, QFMMethod
from nriqa.methods.qfm.teacher import prepare_teacher, pseudo_label, recorded_compute, teacher_key

__all__ = ["ABLATIONS", "MAX_DEFAULT_CAPACITY", "RULES", "SOURCE_PSEUDO", "SOURCE_STUDENT",
           "SOURCE_TEACHER", "Entries", "FeatureMemory", "Match", "QFMMethod", "default_capacity",
           "match", "prepare_teacher", "pseudo_label", "recorded_compute", "stack_entries",
           "teacher_key"]
