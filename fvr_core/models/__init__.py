"""Models: the registry (each model's builder, input size, saliency layer and parameter count), the
write-up's CNN, the forensic residual detectors and the ensemble model.
Imports only the bottom modules (settings, metrics): nothing of data, runs or above."""
