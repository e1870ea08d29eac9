"""Settings shared by the tests that train for real: digits-lt at 8x8, a few seconds a run."""

TINY_DIGITS_DATA = {
    "name": "digits-lt",
    "imbalance": 10,
    "val_per_class": 5,
    "batch_size": 64,
    "eval_batch_size": 256,
    "augment": "none",
    "args": {"image_size": 8},
}
