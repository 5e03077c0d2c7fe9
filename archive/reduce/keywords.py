"""Every FITS keyword that reduction writes, in one place.

Header values that *describe* the frame (OBJECT, FILTER, EXPTIME, DATE-OBS, INSTRUME, ...)
are copied from the input light, so that ingest normalizes a product like its raw frames;
the keywords below are the ones reduction adds. The image-type values are those that
``configs/dialects/default.toml`` maps to ``calibrated``, ``registered`` and ``stacked``.
"""

from __future__ import annotations

#: Image-type keyword and its values per derived product.
IMAGE_TYPE = "IMAGETYP"
IMAGE_TYPE_VALUES = {"calibrated": "CALIBRATED", "registered": "REGISTERED", "stacked": "STACKED"}

#: Masters used by calibration (file names) and how the dark was applied.
MASTER_BIAS = "MBIAS"
MASTER_DARK = "MDARK"
MASTER_FLAT = "MFLAT"
DARK_METHOD = "DARKMETH"
DARK_SCALE = "DARKSCAL"
FLAT_NORM = "FLATNORM"
COSMIC_RAYS = "CRCLEAN"
#: Steps applied, in order (e.g. 'bias,dark,flat').
STEPS = "CALSTEPS"

#: Registration: the reference file, the transform, and the shift in pixels.
REFERENCE = "REGREF"
SHIFT_X = "REGDX"
SHIFT_Y = "REGDY"
ROTATION = "REGROT"
SCALE = "REGSCALE"

#: Stacking: method, inputs, total exposure and the date range of the inputs.
COMBINE = "COMBINE"
NCOMBINE = "NCOMBINE"
TOTAL_EXPOSURE = "TOTEXP"
DATE_BEGIN = "DATE-BEG"
DATE_END = "DATE-END"

#: The exposure keywords, as read and as written (exposure of one input, s).
EXPOSURE_TIME = "EXPTIME"
DATE_OBS = "DATE-OBS"

#: Provenance: the reduction row's step and fingerprint, and the software.
REDUCTION_STEP = "REDSTEP"
FINGERPRINT = "REDFPRNT"
SOFTWARE = "REDSOFT"

#: Keywords dropped from copied headers (they describe the raw pixels or the raw file, not
#: the product): scaling, display range and checksums.
DROPPED = ("BZERO", "BSCALE", "BLANK", "DATAMIN", "DATAMAX", "CBLACK", "CWHITE", "CHECKSUM", "DATASUM")

#: Structural keywords of the FITS standard, written by astropy for each HDU: never copied
#: from an input (an extension's XTENSION/PCOUNT/GCOUNT would make a primary HDU invalid).
STRUCTURAL = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT",
              "GCOUNT", "EXTNAME", "EXTVER", "INHERIT")
