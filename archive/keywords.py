"""The FITS keywords archive writes into its products, read once from ``configs/keywords.toml``.

That data file is the only place they are named (``shared/DESIGN.md``, "Rules are data");
this module gives them names in code. Every product, master or not, carries its reduction's
fingerprint under one keyword (:data:`FINGERPRINT`).
"""

from __future__ import annotations

from archive.config import read_toml
from archive.resources import resource_dir

_K = read_toml(resource_dir("configs") / "keywords.toml")

#: Image-type keyword and its value per product kind (``master_bias`` ... ``stacked``).
IMAGE_TYPE: str = _K["image_type"]["keyword"]
IMAGE_TYPE_VALUES: dict[str, str] = dict(_K["image_type"]["values"])

#: Provenance of every product.
REDUCTION_STEP: str = _K["provenance"]["step"]
FINGERPRINT: str = _K["provenance"]["fingerprint"]
SOFTWARE: str = _K["provenance"]["software"]
RULE_VERSION: str = _K["provenance"]["rule_version"]
HISTORY: str = _K["provenance"]["history"]

#: Exposure: of one input (s), the date range and the total exposure of a stack (s).
EXPOSURE_TIME: str = _K["exposure"]["exposure_time"]
DATE_OBS: str = _K["exposure"]["date_obs"]
DATE_BEGIN: str = _K["exposure"]["date_begin"]
DATE_END: str = _K["exposure"]["date_end"]
TOTAL_EXPOSURE: str = _K["exposure"]["total_exposure"]

#: Masters and stacks.
NCOMBINE: str = _K["combine"]["ncombine"]
COMBINE: str = _K["combine"]["method"]
STACK_NORMALIZATION: str = _K["combine"]["normalization"]
BIAS_SUBTRACTED: str = _K["master"]["bias_subtracted"]
NORMALIZED: str = _K["master"]["normalized"]
#: Dark models: the shortest and longest exposure fitted (s), the intercept extension's name.
DARK_MODEL_TMIN: str = _K["master"]["dark_model_tmin"]
DARK_MODEL_TMAX: str = _K["master"]["dark_model_tmax"]
INTERCEPT: str = _K["master"]["intercept"]

#: Calibration.
MASTER_BIAS: str = _K["calibrate"]["master_bias"]
MASTER_DARK: str = _K["calibrate"]["master_dark"]
MASTER_FLAT: str = _K["calibrate"]["master_flat"]
BAD_PIXELS: str = _K["calibrate"]["bad_pixels"]
BADPIX_SOURCE: str = _K["badpix"]["source"]
BADPIX_HOT: str = _K["badpix"]["hot"]
BADPIX_COLD: str = _K["badpix"]["cold"]
BAD_PIXEL_COUNT: str = _K["calibrate"]["bad_pixel_count"]
DARK_METHOD: str = _K["calibrate"]["dark_method"]
DARK_SCALE: str = _K["calibrate"]["dark_scale"]
FLAT_NORM: str = _K["calibrate"]["flat_norm"]
COSMIC_RAYS: str = _K["calibrate"]["cosmic_rays"]
STEPS: str = _K["calibrate"]["steps"]
OVERSCAN: str = _K["calibrate"]["overscan"]
TRIM: str = _K["calibrate"]["trim"]
RAW_SECTIONS: tuple[str, ...] = tuple(_K["calibrate"]["raw_sections"])

#: Colour: the demosaicing method, the mosaic's pattern, and the mosaic keywords a demosaiced
#: product drops.
DEMOSAIC: str = _K["colour"]["demosaic"]
MOSAIC_PATTERN: str = _K["colour"]["mosaic_pattern"]
MOSAIC: tuple[str, ...] = tuple(_K["colour"]["mosaic"])

#: Registration.
REFERENCE: str = _K["register"]["reference"]
SHIFT_X: str = _K["register"]["shift_x"]
SHIFT_Y: str = _K["register"]["shift_y"]
ROTATION: str = _K["register"]["rotation"]
SCALE: str = _K["register"]["scale"]

#: Keywords never copied from an input's header into a product.
DROPPED: tuple[str, ...] = tuple(_K["copy"]["dropped"])
STRUCTURAL: tuple[str, ...] = tuple(_K["copy"]["structural"])
