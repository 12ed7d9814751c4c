"""Training: data, augmentation, the loop, calibration, artifacts; `run_training` ties them."""
