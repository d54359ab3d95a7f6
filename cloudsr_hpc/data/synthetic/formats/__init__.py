"""Writers of synthetic scenes in the sensors' real file formats, with real file names.

Contract shared by every writer in this package:

* Input fields are ``float32`` numpy arrays in **physical units** -- reflectance in percent
  (satpy's ``calibration='reflectance'``) for solar channels, brightness temperature in kelvin
  (``'brightness_temperature'``) for thermal channels -- keyed by satpy's channel name, in the
  package's canonical orientation (see :mod:`cloudsr_hpc.data.geometry`: row 0 north, column 0
  west).  NaN marks off-disk / invalid pixels and is written as the format's fill value.
* Each writer inverts the format's calibration (physical -> radiance -> counts) so that satpy's own
  reader, loading the written file, returns the input values to within the format's quantisation.
* Files are written under a temporary name in the target directory and renamed into place: a file
  with a real name is complete.
* Each writer returns the list of paths it wrote.
"""
