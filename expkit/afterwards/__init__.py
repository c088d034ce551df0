"""After training: a run folder's checkpoint read back into the model it was trained as.

    loading.py   run folder + checkpoint + overrides -> (config, model with its weights, data facts)
    evaluate.py  `expkit eval`, expkit.evaluate: loss, accuracy, per-class table, confusion matrix
    predict.py   `expkit predict`: image files -> class and probability
    export.py    `expkit export`: a TorchScript or torch.export file with the normalization inside

Nothing here changes a run's record: the only files written are new outputs under the
run's eval/ and export/ folders (and, for eval, a TensorBoard image), and only once
everything has been read and checked.
"""
