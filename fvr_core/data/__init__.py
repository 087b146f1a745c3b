"""Data: images decoded and cached, data sets of one or several sources and their split, zip
archives, augmentation, the synthetic demo set and the Kaggle download.
Imports only the bottom modules (settings, files): nothing of models, runs or above."""
