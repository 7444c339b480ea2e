"""Blood cell classification on BloodMNIST: data, models, training, evaluation, explanations, run store.

This package never imports streamlit, and its top level imports nothing heavy: TensorFlow is loaded only
by the modules that need it (training, models, inference, cam, pipeline, preprocessing, batchnorm).
"""
