"""The evaluation protocols as methods of their own (a run restores an encoder with
``init_from``): fine-tuning, the linear probe and kNN, on the ``EncoderProtocol`` they share."""
