"""A library the stand-in study script imports from PYTHONPATH only (never from the study repo).

The real compare_models.py imports the study's own packages; this module plays the part of
a dependency that is only found when the submitting shell's PYTHONPATH reaches the run.
"""


def tag() -> str:
    return "ptycho_helpers"
