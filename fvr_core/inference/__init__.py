"""Using finished runs: evaluation, calibration, prediction of photos (faces, saliency), robustness,
outside folders, held-out generators and ensembles of runs. Imports workspace, runs, config, data,
models and the bottom modules; never training."""
