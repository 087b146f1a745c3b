"""Training: the trainer, torchrun, devices, SIGTERM, the background queue and its workers, time
estimates and hyperparameter searches. Imports inference, workspace, runs, config, data, models and
the bottom modules; never report, cli or the pages."""
