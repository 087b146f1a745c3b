"""Runs: a run is a folder (store), its weights (checkpoint: safetensors, no pickle) and the runs
shipped with the repository (reference). Imports config, data, models and the bottom modules."""
