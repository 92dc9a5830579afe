"""Downstream evaluation of pre-trained encoders (``mae-trainer probe``): k-NN and linear probes."""
