"""Reference reproduction of PALS (Park, Kim & Heo, Sensors 2022, doi:10.3390/s22072623)."""

__version__ = "0.1.0"

IGNORE_INDEX = 255  # the label of pixels without a class: no loss, not scored (docs/method.md, section 4)
